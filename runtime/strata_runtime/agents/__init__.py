"""Agents: the manager (config per tenant/chatbot, hashing, eviction) and the conversation turn workflow."""
