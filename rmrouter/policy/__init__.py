"""The LM policy online DPO trains: built, sampled, scored and stepped one way for every entry point."""
