"""Toolcore: the tools agents may call, their executors, and the agent's tool-calling loop."""
