"""``python -m bench``: run the agent overhead benchmark."""

from __future__ import annotations

from bench.agent_overhead import main

if __name__ == "__main__":
    main()
