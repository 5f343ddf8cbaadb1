"""Renders the gilscope chart the way `helm template` does, with Helm's own Go SDK.

No helm binary can be installed here (no registry we reach ships one for Linux), so
this uses helm-python-sdk: ctypes bindings to libhelm_c, a C ABI over Helm's
official Go packages (chart loader, values merge, template engine, linter). The
templates are rendered by Helm's engine, not by a re-implementation.

Usage: render.py CHART_DIR [--name N] [--namespace NS] [--set-json JSON] [--lint]
Prints the rendered objects as one multi-document YAML stream (sorted by template
path), or with --lint runs `helm lint --strict` and exits 1 on any finding.
"""
import argparse
import json
import sys

import helm_python as helm


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("chart")
    parser.add_argument("--name", default="gilscope")
    parser.add_argument("--namespace", default="gilscope")
    parser.add_argument("--set-json", default="{}", help="values overriding values.yaml, as JSON")
    parser.add_argument("--lint", action="store_true")
    args = parser.parse_args()
    values = json.loads(args.set_json)

    if args.lint:
        report = helm.lint(args.chart, values, strict=True)
        # Severity: 1 info, 2 warning, 3 error; --strict makes warnings fail too.
        messages = report.get("messages") or []
        for m in messages:
            print(f"lint severity {m.get('severity')}: {m.get('path')}: {m.get('error')}", file=sys.stderr)
        failed = [m for m in messages if int(m.get("severity") or 0) >= 2] or report.get("errors")
        print(f"lint: {report.get('total_charts_linted')} chart(s), {len(messages)} message(s)", file=sys.stderr)
        return 1 if failed else 0

    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    for path in sorted(rendered):
        text = rendered[path].strip()
        if not path.endswith((".yaml", ".yml")) or not text:
            continue
        print(f"---\n# Source: {path}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
