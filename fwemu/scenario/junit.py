"""Scenario results as JUnit XML, the report format CI systems read (Jenkins, GitLab, GitHub
Actions' test reporters): one testsuite, one testcase per scenario, a failure with the report."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from fwemu.scenario.report import details, timeline
from fwemu.scenario.runner import ScenarioResult


def junit_xml(results: Sequence[ScenarioResult], suite: str = "fwemu") -> str:
    """The XML document (with its declaration) for `results`."""
    failures = sum(r.error is None and not r.passed for r in results)
    errors = sum(r.error is not None for r in results)
    root = ET.Element("testsuites")
    testsuite = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors=str(errors),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for result in results:
        scenario = result.scenario
        case = ET.SubElement(
            testsuite,
            "testcase",
            classname=f"{suite}.scenario",
            name=scenario.name,
            file=scenario.origin,
            time=f"{result.seconds:.3f}",
        )
        if result.error is not None:
            ET.SubElement(case, "error", message=result.error).text = "\n".join(details(result))
        elif not result.passed:
            message = result.problems[0] if result.problems else "failed"
            ET.SubElement(case, "failure", message=message).text = "\n".join(details(result))
        ET.SubElement(case, "system-out").text = "\n".join(timeline(result))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
