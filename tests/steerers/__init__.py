"""Steering-method tests: the contract every method owes (`test_contract.py`, over the
registry) and one file per method for what is its own."""
