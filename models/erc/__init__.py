"""CMATH (arXiv 2411.10060) for emotion recognition in conversation, with its baselines."""
