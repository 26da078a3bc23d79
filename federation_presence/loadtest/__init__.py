"""The EDU load generator: synthetic origins, their transactions, the sender."""
