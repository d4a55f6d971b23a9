"""Oxford-IIIT Pet data: layout and splits, paired transforms, download."""
