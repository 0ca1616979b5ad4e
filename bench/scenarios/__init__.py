"""One module per benchmark scenario; each exposes run(cfg) -> Scenario."""
