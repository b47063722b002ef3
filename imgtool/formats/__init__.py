"""Byte layouts: Caliptra 1.x/ASPEED manifests, FLSH flash images, firmware bundles, padding."""
