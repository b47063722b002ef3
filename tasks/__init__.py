"""doit task creators for cptra-imgtool (used by dodo.py and `cptra-imgtool build`)."""
