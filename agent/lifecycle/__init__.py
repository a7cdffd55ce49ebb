"""A tracked step's lifecycle: schedules, budget, needs, step view, phases, metadata."""
