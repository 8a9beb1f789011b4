"""NeurMAP Edge: unpaired motion-deblurring training (NeurMAP) carried to edge devices."""
__version__ = "0.1.0"
