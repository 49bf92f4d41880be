"""The search: study files and their storage, the proxy objective, the workers that run a study, promotion, and
reading studies back (records, export, status, the dashboard). Its command line is the `cli` package."""
