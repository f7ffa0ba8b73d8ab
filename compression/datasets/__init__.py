"""Data set loaders: each takes a data directory and says where it looked when it is wrong."""
