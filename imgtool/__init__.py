"""cptra-imgtool: signed SoC manifests and flash images for Caliptra-secured SoCs."""

__version__ = "0.1.0"
