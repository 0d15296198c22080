"""Sample data synthesis: real portraits warped into emotional talking clips, with emotion prosody."""
