"""Monthly billing: the statement from the receipts, its check, the job and its schedule."""
