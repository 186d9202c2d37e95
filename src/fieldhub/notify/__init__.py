"""Outbound notifications (webhooks, e-mail): bounded queues, retries, digests, a delivery log."""
