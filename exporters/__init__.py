"""carecourse exporters: patient records to files and servers."""
