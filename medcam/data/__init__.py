"""Dataset readers (real on-disk layouts) and synthetic generators that write those layouts."""
