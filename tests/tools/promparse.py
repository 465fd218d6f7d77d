#!/usr/bin/env python3
"""Parses a Prometheus text exposition on stdin with the reference Python parser
(prometheus_client) and prints one JSON object per sample: the tests compare
values through this, so a scrape that does not parse fails them."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
seen = set()
for family in text_string_to_metric_families(text):
    if family.name in seen:
        sys.exit(f"family {family.name} appears twice")
    seen.add(family.name)
    if not family.documentation:
        sys.exit(f"family {family.name} has no HELP")
    for s in family.samples:
        print(json.dumps({"family": family.name, "type": family.type,
                          "name": s.name, "labels": s.labels, "value": s.value}))
