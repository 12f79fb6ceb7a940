"""LGPD: personal-data retention, data-subject erasure and its ledger, off-boarding, reports.

The rules are declared data (`rules.json`, or the file named by KRYONIX_LGPD_RULES); see rules.py.
"""
