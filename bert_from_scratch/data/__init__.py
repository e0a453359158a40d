"""Text to arrays: fetching corpora, WordPiece, pretraining instances, classification examples."""
