"""Real services started by the test suite (broker, IMAP server, database).

Each helper starts its own throwaway instance on loopback ports under a
temporary directory and fails loudly when a required program is missing.
"""
