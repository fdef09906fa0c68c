"""Rate limits: token buckets (pure math), their stores (Redis, memory), and the policy."""
