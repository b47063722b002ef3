"""Key files and signing math: ECC P-384, LMS (RFC 8554), the LMS leaf state and its store."""
