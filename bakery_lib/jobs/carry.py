"""What a sync manages in an item's config, and what it carries over from the config Jenkins has.

Posting ``job/NAME/config.xml`` REPLACES the item: core's ``AbstractItem.updateByXml`` unmarshals
the posted XML with ``XmlFile.unmarshalNullingOut(this)``, so whatever the posted document leaves
out is gone, and an empty ``<properties/>`` empties the item's whole property list (for a folder:
its Folder Properties, its folder-scoped credentials store, its health metrics...). Posting the
rendered template as it is would wipe what people configure on the folder and on the jobs.

So, per element (jenkins/README.md, "What generate-jobs manages"):

- a **folder** (cloudbees-folder ``AbstractFolder``): only its ``description`` (the marker) is
  managed. Its ``properties`` (Folder Properties, ``FolderCredentialsProperty``...), ``folderViews``,
  ``healthMetrics``, ``icon`` and anything else are carried over from Jenkins as they are;
- a **job** (workflow-job ``WorkflowJob``): the top-level elements the template writes are managed
  (``description``, ``keepDependencies``, ``definition``, ``triggers``, ``disabled``); inside
  ``properties`` the four property classes the bakery writes are managed (build discarder, no
  concurrent builds, parameters, the upstream trigger) and every other property (added by a plugin
  the bakery does not know: rebuild settings, authorization matrix, throttling...) is carried over;
  top-level elements the template does not write (``actions``, ``displayName``, ``quietPeriod``,
  ``authToken``...) are carried over;
- a **view** is managed whole (it goes through the view API, not the folder's config).

``carried_over`` builds the config to post from the rendered one and the current one; comparing
that with the current config tells whether anything managed differs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

# The job properties generate-jobs writes (templates/jenkins/*-job.xml.j2). A catalogue without
# upstream_jobs renders no trigger property: it is managed all the same, so a removed trigger goes.
MANAGED_JOB_PROPERTIES = frozenset({
    "jenkins.model.BuildDiscarderProperty",
    "org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty",
    "hudson.model.ParametersDefinitionProperty",
    "org.jenkinsci.plugins.workflow.job.properties.PipelineTriggersJobProperty",
})
MANAGED_FOLDER_ELEMENTS = frozenset({"description"})
XML_HEADER = "<?xml version='1.0' encoding='UTF-8'?>\n"


# Root elements that are no class name, as XStream aliases them (Items.XSTREAM).
ROOT_ALIASES = {"flow-definition": "org.jenkinsci.plugins.workflow.job.WorkflowJob",
                "project": "hudson.model.FreeStyleProject"}


def item_class(xml: str) -> str | None:
    """The Java class of an item config (None for text that is not XML)."""
    try:
        tag = ET.fromstring(xml).tag
    except ET.ParseError:
        return None
    return ROOT_ALIASES.get(tag, tag)


def carried_over(kind: str, desired: str, current: str) -> str:
    """The config to post: ``desired``'s managed parts, everything else from ``current``.

    Text that is not XML (either side) is left to the comparison: ``desired`` is returned."""
    if kind == "view":
        return desired
    try:
        new = ET.fromstring(desired)
        old = ET.fromstring(current)
    except ET.ParseError:
        return desired
    if new.tag != old.tag:  # another kind of item: Jenkins refuses the update, say so as it is
        return desired
    merged = _folder(new, old) if kind == "folder" else _job(new, old)
    return XML_HEADER + ET.tostring(merged, encoding="unicode") + "\n"


def _folder(new: ET.Element, old: ET.Element) -> ET.Element:
    out = ET.Element(old.tag, old.attrib)
    for child in old:
        out.append(_managed(new, child.tag) if child.tag in MANAGED_FOLDER_ELEMENTS else child)
    for tag in sorted(MANAGED_FOLDER_ELEMENTS):
        if old.find(tag) is None and new.find(tag) is not None:
            out.append(_managed(new, tag))
    return out


def _managed(new: ET.Element, tag: str) -> ET.Element:
    found = new.find(tag)
    return found if found is not None else ET.Element(tag)


def _job(new: ET.Element, old: ET.Element) -> ET.Element:
    out = ET.Element(new.tag, new.attrib)
    written = {child.tag for child in new}
    for child in new:
        if child.tag == "properties":
            out.append(_job_properties(child, old.find("properties")))
        elif child.tag == "actions" and old.find("actions") is not None:
            out.append(old.find("actions"))  # type: ignore[arg-type]  # run-time state Jenkins keeps
        else:
            out.append(child)
    for child in old:
        if child.tag not in written:
            out.append(child)
    return out


def _job_properties(new: ET.Element, old: ET.Element | None) -> ET.Element:
    out = ET.Element("properties", new.attrib)
    out.extend(list(new))
    for prop in list(old) if old is not None else []:
        if prop.tag not in MANAGED_JOB_PROPERTIES:
            out.append(prop)
    return out
