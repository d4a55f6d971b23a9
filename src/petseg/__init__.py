"""petseg: pet vs background segmentation on Oxford-IIIT Pet, models written from scratch."""

__version__ = "0.1.0"
