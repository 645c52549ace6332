"""The test suite, in tiers by what a test needs (tests/unit, engine, integration, fleet, deploy;
helpers in tests/support). A package, so that a module name may recur from tier to tier."""
