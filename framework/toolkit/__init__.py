"""What plugins share: module selection, pruning and quantization machinery, training loops, sparse storage."""
