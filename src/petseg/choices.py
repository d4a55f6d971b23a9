"""Valid values of the command-line choices, as torch-free tuples."""

STEMS = ("deep", "classic")
ACTIVATIONS = ("relu", "silu")
UPSAMPLES = ("nearest", "transpose")
