"""What the tests share: real services on loopback, fleets, the web front's helpers, the deploy
checks' tools, and small builders of manifests, settings and jobs. No test module imports
another; what two of them need lives here."""
