"""Model adapters: one per model family, each with a SiteMap of named hook sites (DESIGN.md section 4)."""
