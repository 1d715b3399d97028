"""Human-facing views of targets and tile programs: rich tables for the terminal
(`farc targets`, `farc inspect`, `farc report`), matplotlib PNG charts (Agg backend) and one
self-contained HTML page with the charts embedded as base64 PNGs (no network access)."""
