"""The harness is as strict as Jenkins' CPS and script-security sandbox where our Jenkinsfiles could go
wrong (issue 23).

Each case is a small Jenkinsfile run by tests/support/harness.groovy. What Jenkins does is cited in the
harness (CpsTransformer, CpsRuntime, CpsRules, SandboxRuntime): a local that is not Serializable, in scope
while a step runs, fails the build when CpsThreadGroup.saveProgram writes the program; a @NonCPS method that
calls a step or CPS-transformed code ends in "expected to call ... but wound up catching ..."; a comparator
closure is fine inside @NonCPS code (plain Groovy), not outside; calls, property reads and writes, subscripts
and operators are checked against the whitelist when they are reached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pipeline import Build, PipelineHarness


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineHarness]:
    h = PipelineHarness(tmp_path_factory.mktemp("rules")).start()
    yield h
    h.stop()


def run(harness: PipelineHarness, tmp_path: Path, helpers: str, steps: str, expect_error: bool) -> Build:
    script = tmp_path / "Jenkinsfile"
    script.write_text(f"{helpers}\npipeline {{\n  agent any\n  stages {{ stage('x') {{ steps {{ {steps} }} }} }}\n}}\n")
    return harness.run(script, tmp_path / "ws", parameters={}, parameter_definitions={},
                       agent_env={"PATH": os.environ["PATH"]}, expect_groovy_errors=expect_error)


MATCHER_ACROSS_SH = """
String version(String text) {
    def m = text =~ /v([0-9]+)/
    sh 'true'
    return m[0][1]
}
"""

MATCHER_DROPPED_BEFORE_SH = """
String version(String text) {
    def m = text =~ /v([0-9]+)/
    String found = m[0][1]
    m = null
    sh 'true'
    return found
}
"""

MATCHER_IN_INNER_BLOCK = """
String version(String text) {
    String found = ''
    if (text) {
        def m = text =~ /v([0-9]+)/
        found = m[0][1]
    }
    sh 'true'
    return found
}
"""

NONCPS_MATCHER = """
@NonCPS
String versionOf(String text) {
    def m = text =~ /v([0-9]+)/
    return m ? m[0][1] : ''
}
String version(String text) {
    String found = versionOf(text)
    sh 'true'
    return found
}
"""

ITERATOR_IN_A_LIST_ACROSS_SLEEP = """
String version(String text) {
    List held = [text.readLines().iterator()]
    sleep 0
    return 'never'
}
"""


@pytest.mark.parametrize("helpers, culprit", [(MATCHER_ACROSS_SH, "java.util.regex.Matcher"),
                                              (ITERATOR_IN_A_LIST_ACROSS_SLEEP, "java.util")],
                         ids=["matcher-across-sh", "iterator-in-a-list-across-sleep"])
def test_a_non_serializable_local_held_across_a_step_fails_the_build(harness, tmp_path, helpers, culprit):
    build = run(harness, tmp_path, helpers, "echo version('v42')", expect_error=True)
    assert build.result == "FAILURE"
    errors = "\n".join(build.data["groovyErrors"])
    assert "java.io.NotSerializableException: " + culprit in errors, build.log
    assert "of WorkflowScript.version, held across step" in errors


@pytest.mark.parametrize("helpers", [MATCHER_DROPPED_BEFORE_SH, MATCHER_IN_INNER_BLOCK, NONCPS_MATCHER],
                         ids=["nulled-before-the-step", "out-of-scope", "in-noncps"])
def test_what_jenkins_can_serialize_passes(harness, tmp_path, helpers):
    """Nulled before the step, out of scope (a finished block), or inside @NonCPS: nothing to serialize."""
    build = run(harness, tmp_path, helpers, "echo version('v42')", expect_error=False)
    assert build.result == "SUCCESS", build.log
    assert "42" in build.log


NONCPS_CALLS_A_STEP = """
@NonCPS
void announce(List names) {
    names.each { String name -> echo "hello ${name}" }
}
"""

NONCPS_CALLS_CPS_CODE = """
String shout(String name) { return name.toUpperCase() }
@NonCPS
String shoutAll(List names) {
    return names.collect { String name -> shout(name) }.join(' ')
}
"""


@pytest.mark.parametrize("helpers, steps, caught", [
    (NONCPS_CALLS_A_STEP, "announce(['a', 'b'])", "but wound up catching echo"),
    (NONCPS_CALLS_CPS_CODE, "echo shoutAll(['a', 'b'])", "expected to call WorkflowScript.shoutAll but wound up "
                                                         "catching WorkflowScript.shout"),
], ids=["step", "cps-method"])
def test_a_noncps_method_may_not_call_steps_or_cps_code(harness, tmp_path, helpers, steps, caught):
    build = run(harness, tmp_path, helpers, steps, expect_error=True)
    assert build.result == "FAILURE"
    assert caught in "\n".join(build.data["groovyErrors"]), build.log
    assert "hello a" not in build.log


def test_a_comparator_closure_is_fine_in_noncps_code_only(harness, tmp_path):
    helpers = """
@NonCPS
List byLength(List names) {
    return names.sort { String a, String b -> a.length() <=> b.length() }
}
List byLengthCps(List names) {
    return names.sort { String a, String b -> a.length() <=> b.length() }
}
"""
    build = run(harness, tmp_path, helpers, "echo byLength(['ccc', 'a', 'bb']).join(',')", expect_error=False)
    assert build.result == "SUCCESS" and "a,bb,ccc" in build.log, build.log
    cps = run(harness, tmp_path, helpers, "echo byLengthCps(['ccc', 'a', 'bb']).join(',')", expect_error=True)
    assert cps.result == "FAILURE" and "CpsClosure2.call" in "\n".join(cps.data["groovyErrors"])


@pytest.mark.parametrize("steps, refused", [
    # a value's method that generic-whitelist does not list (String.intern), reached through a variable
    ("script { String name = params.toString(); echo name.intern() }", "method java.lang.String intern"),
    # a GString hands unknown methods to String: checked as String's
    ("script { String n = 'a'; echo \"${n}b\".intern() }", "method java.lang.String intern"),
    # GDK methods are checked by their DefaultGroovyMethods/StringGroovyMethods signature
    ("script { echo 'http://x.invalid/'.toURL().toString() }",
     "staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods toURL java.lang.String"),
], ids=["java-method", "gstring", "gdk-method"])
def test_calls_on_values_are_checked_against_the_whitelist_at_run_time(harness, tmp_path, steps, refused):
    """The receiver's type is known only at run time: the harness used to let every such call through."""
    build = run(harness, tmp_path, "", steps, expect_error=True)
    assert build.result == "FAILURE"
    assert f"Scripts not permitted to use {refused}" in "\n".join(build.data["groovyErrors"]), build.log


def test_whitelisted_calls_on_values_run(harness, tmp_path):
    steps = ("script { String n = ' web '; List l = ['b', 'a']; l.add(0, n.trim()); "
             "echo \"${l.subList(0, 2).join('+')}:${'a,b'.split(',').findAll { it != 'a' }.join('')}:"
             "${params.containsKey('X')}:${'x'.readLines().size()}\" }")
    build = run(harness, tmp_path, "", steps, expect_error=False)
    assert build.result == "SUCCESS" and "web+b:b:false:1" in build.log, build.log


def test_env_assignment_of_null_is_the_string_null(harness, tmp_path):
    """workflow-cps EnvActionImpl.setProperty stores String.valueOf(value): `env.X = null` does not unset X."""
    build = run(harness, tmp_path, "", "script { env.GONE = 'x'; env.GONE = null; sh 'echo \"GONE=[$GONE]\"' }",
                expect_error=False)
    assert build.result == "SUCCESS" and "GONE=[null]" in build.log, build.log
    assert build.data["buildVariables"]["GONE"] == "null"


# --- property reads and writes, subscripts, operators: checked as script-security checks them -------------
# The sandbox intercepts these too (groovy-sandbox Checker.checkedGetProperty/checkedSetProperty/
# checkedGetArray/checkedSetArray/checkedBinaryOp; script-security SandboxInterceptor.onGetProperty,
# onSetProperty, onGetArray, onSetArray, onMethodCall for an operator's method); the harness used to let
# every one of them through.
@pytest.mark.parametrize("steps, refused", [
    # a property read is its getter's call: Closure.getOwner is not on the generic whitelist
    ("script { Closure c = { -> 1 }; echo \"${c.owner}\" }", "method groovy.lang.Closure getOwner"),
    # a property write is its setter's call
    ("script { Closure c = { -> 1 }; c.directive = 1; echo 'set' }", "method groovy.lang.Closure setDirective int"),
    # `env[...]` is DefaultGroovyMethods.getAt(Object, String): blacklisted (SECURITY-538), so is putAt
    ("script { echo env['HOME'] }",
     "staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods getAt java.lang.Object java.lang.String"),
    ("script { env['X'] = 'y'; echo 'set' }",
     "staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods putAt java.lang.Object java.lang.String "
     "java.lang.Object"),
    # an operator is its method: List * Number is DefaultGroovyMethods.multiply(List, Number), not whitelisted
    ("script { echo(([1, 2] * 2).toString()) }",
     "staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods multiply java.util.List java.lang.Number"),
    ("script { List l = [1]; l *= 2; echo 'multiplied' }",
     "staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods multiply java.util.List java.lang.Number"),
    # a static call is checked by the overload it selects: JsonOutput.toJson(Object) is blacklisted
    ("script { echo groovy.json.JsonOutput.toJson(['a']) }", "staticMethod groovy.json.JsonOutput toJson java.lang.Object"),
], ids=["property-read", "property-write", "subscript-read", "subscript-write", "operator", "compound-assignment",
        "static-overload"])
def test_properties_subscripts_and_operators_are_checked_at_run_time(harness, tmp_path, steps, refused):
    build = run(harness, tmp_path, "", steps, expect_error=True)
    assert build.result == "FAILURE"
    assert f"Scripts not permitted to use {refused}" in "\n".join(build.data["groovyErrors"]), build.log
    assert "set" not in build.log.splitlines() and "multiplied" not in build.log.splitlines()


def test_whitelisted_properties_subscripts_and_operators_run(harness, tmp_path):
    """What the Jenkinsfiles do with them is on the whitelist and runs: Map property and subscript reads and
    writes (Map.get/put, DefaultGroovyMethods.getAt/putAt(Map...)), List subscripts, `x++` (next(Number)),
    `+=` on a String (plus(String, Object)), `<<` on a List, comparisons, `in` and `==~` (ScriptBytecodeAdapter),
    unary minus on a number, RunWrapper and `params` properties."""
    steps = ("script { Map m = [n: 1]; m.n++; m['k'] = 'v'; m.k += 'w'; List l = ['a']; l << 'b'; l[1] = 'c'; "
             "int i = 0; i++; String s = 'x'; s += l[0]; boolean ok = 'b' in l || s ==~ /x./ && i >= 1; "
             "echo \"${m.n}:${m['k']}:${l.join('')}:${i}:${s}:${ok}:${-i}:${params.X}:${currentBuild.number}\" }")
    build = run(harness, tmp_path, "", steps, expect_error=False)
    assert build.result == "SUCCESS" and "2:vw:ac:1:xa:true:-1:null:1" in build.log, build.log


def test_in_is_checked_only_in_noncps_code(harness, tmp_path):
    """In CPS code `a in b` is ScriptBytecodeAdapter.isCase (whitelisted, groovy-cps Builder.isCase); in
    @NonCPS code groovy-sandbox makes it `b.isCase(a)`, checked: isCase(Map, Object) is not whitelisted."""
    helpers = """
@NonCPS
boolean inMapNonCps(String key, Map m) { return key in m }
boolean inMap(String key, Map m) { return key in m }
"""
    build = run(harness, tmp_path, helpers, "echo \"cps:${inMap('a', [a: 1])}\"", expect_error=False)
    assert build.result == "SUCCESS" and "cps:true" in build.log, build.log
    noncps = run(harness, tmp_path, helpers, "echo \"noncps:${inMapNonCps('a', [a: 1])}\"", expect_error=True)
    assert noncps.result == "FAILURE" and "noncps:" not in noncps.log
    assert ("Scripts not permitted to use staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods isCase "
            "java.util.Map java.lang.Object") in "\n".join(noncps.data["groovyErrors"]), noncps.log


# --- the models of Jenkins the Jenkinsfiles' tests rely on ---------------------------------------------------


def test_build_step_parameters_are_not_trimmed_the_form_trims_them(harness, tmp_path):
    """pipeline-build-step hands its StringParameterValues over as given; only the form (Build with Parameters,
    StringParameterDefinition with trim) trims."""
    down = tmp_path / "Down.Jenkinsfile"
    down.write_text("pipeline {\n  agent any\n  stages { stage('x') { steps { echo \"X=[${params.X}]\" } } }\n}\n")
    up = tmp_path / "Up.Jenkinsfile"
    up.write_text("pipeline {\n  agent none\n  stages { stage('x') { steps {\n"
                  "    echo \"X=[${params.X}]\"\n"
                  "    build(job: 'down', parameters: [string(name: 'X', value: ' v\\n')])\n  } } }\n}\n")
    build = harness.run(up, tmp_path / "ws", parameters={"X": " w "}, parameter_definitions={"X": ""},
                        agent_env={"PATH": os.environ["PATH"]},
                        downstream={"down": {"jenkinsfile": str(down), "workspace": str(tmp_path / "down"),
                                             "parameterDefinitions": {"X": ""}}})
    assert build.result == "SUCCESS" and "X=[w]" in build.log, build.log
    assert "X=[ v\n]" in "\n".join(build.data["triggered"][0]["result"]["log"])


def test_current_junit_parses_old_report_files_unless_skip_old_reports(harness, tmp_path):
    """junit >= 1.64 (TestResult.parse): every matching file counts, however old, unless skipOldReports
    (then a file older than the build, less 3 s, is skipped)."""
    ws = tmp_path / "ws"
    (ws / "reports").mkdir(parents=True)
    old = ws / "reports" / "old.xml"
    old.write_text('<testsuite name="s"><testcase name="from-an-earlier-build"/></testsuite>')
    os.utime(old, (old.stat().st_mtime - 3600, old.stat().st_mtime - 3600))
    parsed = run(harness, tmp_path, "", "junit testResults: 'reports/*.xml'", expect_error=False)
    assert [c["name"] for c in parsed.junit_cases] == ["from-an-earlier-build"], parsed.log
    skipped = run(harness, tmp_path, "", "junit testResults: 'reports/*.xml', allowEmptyResults: true, "
                                         "skipOldReports: true", expect_error=False)
    assert skipped.result == "SUCCESS" and skipped.junit_cases == [], skipped.log
