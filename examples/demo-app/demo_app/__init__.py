"""Demo app that Trainyard builds, tests and deploys (standard library only)."""
