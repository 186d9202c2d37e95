"""Commands to devices: formats per stack, the lifecycle state machine, dispatch and tracking."""
