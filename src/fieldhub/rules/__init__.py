"""Rules and alarms: rule documents, their evaluation (pure, shared by live and preview) and,
next, the engine that runs them on the event bus (docs/rules.md)."""
