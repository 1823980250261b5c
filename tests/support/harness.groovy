/*
 * A declarative-Pipeline harness: EXECUTES jenkins/Jenkinsfile and jenkins/release.Jenkinsfile with the
 * semantics of Jenkins, in the spirit of JenkinsPipelineUnit (not obtainable here). Groovy 2.4.21 is the
 * Groovy Jenkins core bundles, so what parses and runs here parses and runs there. The script-security
 * sandbox and the CPS rules are modelled (SandboxCustomizer and CpsTransformer, below): refused calls fail
 * when reached; a comparator closure given to sort/toSorted/unique/max/min, which groovy-cps does not
 * translate, fails there (not inside @NonCPS code); a local that is not Serializable, in scope while a
 * step that saves the program runs, fails as CpsThreadGroup.saveProgram does; a @NonCPS method calling a
 * step or CPS-transformed code fails with CpsVmExecutorService's mismatch message; a call on a value, a
 * property read or write, a subscript and an operator are checked at run time, each as script-security's
 * SandboxInterceptor checks it, against the part of its generic-whitelist the files use (SandboxRuntime).
 *
 * Usage:  groovy harness.groovy SCENARIO.json        one build, result written to scenario.resultFile
 *         groovy harness.groovy --serve               reads scenario paths on stdin, prints "DONE path"
 *                                                     after each (one JVM for a whole test module)
 *
 * How Jenkins behaves, and how this models it (sources named; checked against their code):
 *
 * - `timeout` (workflow-basic-steps TimeoutStepExecution): when the time is up the body is interrupted
 *   (ABORTED, "Timeout has been exceeded"); whatever still runs inside it (for a pipeline-level timeout:
 *   `post`) is interrupted again after a grace period of 60 s ("terminating with extreme prejudice").
 *   Scenarios may scale a unit (`timeScales: {HOURS: 0.001}`) and shorten that grace.
 * - Declarative execution order (pipeline-model-definition ModelInterpreter): the agent is allocated,
 *   then the pipeline-level `environment` (credentials first, then the variables, in order, each seeing
 *   the ones before) and the `options` wrappers (timeout, timestamps, withFolderProperties) wrap BOTH the
 *   stages and `post`: a pipeline-level timeout also cuts `post` short, and an error while evaluating
 *   `environment` fails the build before any stage and without `post`. Options are validated when the
 *   file is compiled: an option whose plugin is missing ("Invalid option type") fails the build before
 *   anything runs, `post` included. Steps of a missing plugin fail at run time ("No such DSL method").
 * - After a stage fails, the later stages are "skipped due to earlier failure(s)"; an UNSTABLE stage does
 *   not skip them. Stage-level `options { timeout }` wraps that stage only (nested `stages` included).
 * - `post` conditions run in this fixed order, each judged against the build result at the moment it is
 *   reached: always, changed, fixed, regression, aborted, failure, success, unstable, unsuccessful,
 *   cleanup (jenkins.io "Pipeline Syntax", post). A failing step in one condition makes the build FAILURE
 *   and the remaining conditions still run.
 * - Results only get worse (hudson.model.Run.setResult): SUCCESS < UNSTABLE < FAILURE < NOT_BUILT < ABORTED.
 *   `error` = AbortException (FAILURE); an interruption = FlowInterruptedException with its result
 *   (ABORTED for an abort or an exceeded timeout). `catchError` catches both by default
 *   (catchInterruptions: true) and sets buildResult (default FAILURE) and stageResult (default SUCCESS).
 * - `sh` (workflow-durable-task-step): runs `sh -xe` in the workspace (or `dir`) with the agent's
 *   environment, the Jenkins variables, the parameters, `env.X` assignments and the enclosing
 *   withEnv/withCredentials/environment bindings; a non-zero exit is "script returned exit code N".
 *   On abort or timeout DurableTaskStep.Execution.stop sends SIGTERM to the process tree and, if the
 *   process has not ended after REMOTE_TIMEOUT (20 s), prints "After 20s process did not stop" and gives
 *   the step up WITHOUT killing it: the process keeps running while `post` starts. Modelled exactly
 *   (the 20 s may be shortened per scenario to keep tests fast; the processes left running are reported).
 * - `junit` as current junit (>= 1.64; checked in its tags: TestResult.parse, JUnitResultArchiver) does it:
 *   EVERY matching file is parsed, old ones too, unless `skipOldReports: true` (then files older than the
 *   build start, less FILE_TIME_PRECISION_MARGIN 3 s, are skipped; junit <= 1.63 ignored them always);
 *   no matching file is an error unless allowEmptyResults; a failed or errored test case makes the build
 *   and the stage UNSTABLE (it does not stop the build); unless `skipPublishingChecks: true` the result is
 *   published as a check named checksName (default "Tests") where a checks-api publisher is installed
 *   (scenario `checksPublisher`), i.e. on the commits of the repository the Jenkinsfile came from.
 * - Nodes and executors (core Queue, workflow-durable-task-step ExecutorStepExecution): `agent { label }`
 *   and `node(label)` take one executor of a node carrying the label (a node also carries its own name)
 *   for their body; `agent none` takes none (the build itself runs on a flyweight executor). Scenario
 *   `nodes` ([{name, labels, executors}]), by default `agent-1` (`bakery`, 2 executors) and the built-in
 *   node (`built-in`, `master`, 2 executors), shared by a build and the builds it starts. A label no node
 *   has ("There are no nodes with the label") or a node whose executors are all held by builds that wait
 *   for this one ("Waiting for next available executor") waits for ever in Jenkins: the harness, which
 *   runs one thing at a time, reports the build tree as result HANG with that message.
 * - Steps that work on files (sh, readFile, writeFile, fileExists, junit, archiveArtifacts, publishHTML,
 *   withCredentials) need a workspace: outside an agent or `node` they fail with workflow-support's
 *   MissingContextVariableException ("Required context class hudson.FilePath is missing").
 * - Restart from stage (pipeline-model-definition RestartDeclarativePipelineAction; scenario
 *   `restart: {fromStage, envOverrides, archiveFrom, archived}`, made by pipeline.restart_of): offered for
 *   top-level stages only (getRestartableStages walks ExecutionModelAction's top-level stages); the stages
 *   before it are 'skipped due to this build restarting at stage "X"' (so their steps, a workspace reset
 *   included, do not run). The restart is a NEW build (RestartDeclarativePipelineAction.run schedules one)
 *   whose flow is made by RestartFlowFactoryAction.create: it runs the ORIGINAL build's script and calls
 *   every FlowCopier, i.e. workflow-api FlowCopier.StandardActions (the parameters), workflow-cps
 *   EnvActionImpl.Copier (every env.X assignment: `envOverrides`), workflow-api
 *   StashManager.CopyStashesAndArtifacts (the original's archived artifacts, `archived`, and stashes,
 *   which exist after a build only with `preserveStashes`), WorkflowRun.Checkouts. Nothing copies the
 *   workspace: the restart may run on any agent; the harness gives it the workspace the test names.
 * - A second abort (scenario `abort.secondWhenFileExists`, or `post`'s own timeout) interrupts the step
 *   running then, in `post` too: DurableTaskStep stop sends SIGTERM to the build's processes, found by
 *   the build's cookie (durable-task ProcessTree.killAll), so `bakery cleanup` in `post` gets it.
 * - `archiveArtifacts`: Ant-style patterns relative to the workspace; nothing matched is an error
 *   unless allowEmptyArchive.
 * - `currentBuild` / `build` return values are RunWrapper (workflow-support): `upstreamBuilds` walks the
 *   build's UpstreamCauses in order, each followed by its own upstream causes; `buildVariables` of a
 *   freestyle (AbstractBuild) upstream are its environment plus its build variables (parameters
 *   included), but of a Pipeline (WorkflowRun) build ONLY its `env.X = ...` assignments
 *   (EnvironmentAction.IncludingOverrides), never its parameters nor its `environment {}` variables.
 *   `getRawBuild()` is refused by the script-security sandbox without script approval.
 * - `build` (pipeline-build-step): parameters the downstream job does not define are dropped with a
 *   warning (core ParametersAction, SECURITY-170); parameters it defines but that are not given take their
 *   defaults; the values are passed as given, NOT trimmed (trimming is the form's, StringParameterDefinition
 *   with trim); with propagate a non-SUCCESS downstream fails the step with the downstream's result.
 * - `params`: the job's parameter definitions with their defaults, overridden by what the build was
 *   started with; a build started by ReverseBuildTrigger gets only defaults; Replay and Rebuild keep the
 *   parameters but not the causes (workflow-cps ReplayAction copies ParametersAction, not CauseAction).
 * - Folder properties (Folder Properties plugin) reach `env` only inside `withFolderProperties`.
 * - credentials-binding: a missing id is "Could not find credentials entry with ID '...'"; a secret file
 *   is copied to a temporary file deleted when the block ends.
 *
 * Aborts are requested by the scenario: `abort: {stage, afterSeconds}` (a user clicking the abort button
 * that long after the stage began) or `abort: {whenFileExists}` (the moment a test chooses).
 *
 * A Groovy programming error (MissingMethodException, MissingPropertyException, NullPointerException,
 * sandbox rejection...) fails the build as in Jenkins and is also listed under "groovyErrors", so the
 * test driver can fail the test on it.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import org.codehaus.groovy.runtime.InvokerHelper
import org.codehaus.groovy.runtime.MetaClassHelper
import org.codehaus.groovy.runtime.typehandling.DefaultTypeTransformation
import java.nio.file.FileSystems
import java.nio.file.Files
import java.nio.file.PathMatcher
import java.util.concurrent.TimeUnit
import org.codehaus.groovy.ast.AnnotationNode
import org.codehaus.groovy.ast.ClassCodeExpressionTransformer
import org.codehaus.groovy.ast.ClassHelper
import org.codehaus.groovy.ast.ClassNode
import org.codehaus.groovy.ast.MethodNode
import org.codehaus.groovy.ast.Parameter
import org.codehaus.groovy.ast.Variable
import org.codehaus.groovy.ast.VariableScope
import org.codehaus.groovy.ast.expr.AttributeExpression
import org.codehaus.groovy.ast.expr.BitwiseNegationExpression
import org.codehaus.groovy.ast.expr.PostfixExpression
import org.codehaus.groovy.ast.expr.PrefixExpression
import org.codehaus.groovy.ast.expr.UnaryMinusExpression
import org.codehaus.groovy.ast.expr.UnaryPlusExpression
import org.codehaus.groovy.syntax.Token
import org.codehaus.groovy.syntax.Types
import org.codehaus.groovy.ast.expr.BinaryExpression
import org.codehaus.groovy.ast.expr.DeclarationExpression
import org.codehaus.groovy.ast.expr.EmptyExpression
import org.codehaus.groovy.ast.expr.ListExpression
import org.codehaus.groovy.ast.expr.MapExpression
import org.codehaus.groovy.ast.expr.SpreadExpression
import org.codehaus.groovy.ast.expr.SpreadMapExpression
import org.codehaus.groovy.ast.stmt.BlockStatement
import org.codehaus.groovy.ast.stmt.ExpressionStatement
import org.codehaus.groovy.ast.stmt.ForStatement
import org.codehaus.groovy.ast.stmt.Statement
import org.codehaus.groovy.ast.stmt.TryCatchStatement
import org.codehaus.groovy.ast.expr.ArgumentListExpression
import org.codehaus.groovy.ast.expr.ClassExpression
import org.codehaus.groovy.ast.expr.ClosureExpression
import org.codehaus.groovy.ast.expr.ConstantExpression
import org.codehaus.groovy.ast.expr.ConstructorCallExpression
import org.codehaus.groovy.ast.expr.Expression
import org.codehaus.groovy.ast.expr.MethodCallExpression
import org.codehaus.groovy.ast.expr.PropertyExpression
import org.codehaus.groovy.ast.expr.StaticMethodCallExpression
import org.codehaus.groovy.ast.expr.TupleExpression
import org.codehaus.groovy.ast.expr.VariableExpression
import org.codehaus.groovy.classgen.GeneratorContext
import org.codehaus.groovy.control.CompilePhase
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.SourceUnit
import org.codehaus.groovy.control.customizers.CompilationCustomizer

class AbortException extends RuntimeException {
    AbortException(String message) { super(message) }
}

class FlowInterruptedException extends RuntimeException {
    String result
    FlowInterruptedException(String result, String message) { super(message); this.result = result }
}

class RejectedAccessException extends SecurityException {
    RejectedAccessException(String signature) {
        super("Scripts not permitted to use ${signature}. Administrators can decide whether to approve or reject this signature.")
    }

    private RejectedAccessException(String message, boolean plain) { super(message) }

    /** A refusal that names no signature to approve ("No such getAt method found: ..."). */
    static RejectedAccessException raw(String message) { return new RejectedAccessException(message, true) }
}

/** The build can never go on: core's Queue keeps its item waiting for ever (no node has the label, or every
 * executor of those that have it is held by a build that waits for this one). Reported as result HANG. */
class HangException extends Error {
    HangException(String message) { super(message) }
}

/** A step that needs a workspace outside `node`/an agent (workflow-support MissingContextVariableException). */
class MissingContextVariableException extends RuntimeException {
    MissingContextVariableException(String step) {
        super("Required context class hudson.FilePath is missing (step ${step})\nPerhaps you forgot to surround " +
              'the code with a step that provides this, such as: node')
    }
}

/**
 * The script-security sandbox, for what can be known from the source: every constructor call, every
 * static method call or static property of a class, and the instance methods the blacklist names, are
 * checked when the file is compiled; a call that is refused is replaced by one that throws
 * RejectedAccessException WHEN REACHED ("Scripts not permitted to use new java.io.File java.lang.String"),
 * as the sandbox's GroovyInterceptor does at run time. Nothing is constructed with `new`, only
 * groovy.json.JsonOutput is called statically (System.getenv, Jenkins.instance... are refused; the overload
 * a JsonOutput call selects is checked at run time: toJson(Object) is blacklisted), and the blacklisted
 * instance methods (execute, getClass, evaluate, getRawBuild, getMetaClass) are refused (this is stricter
 * than Jenkins, which permits the whitelisted constructors and static methods: the files need none).
 * Everything whose target is known only at run time goes through SandboxRuntime (SandboxTransformer puts
 * the calls in, as groovy-sandbox's SandboxTransformer and groovy-cps' SandboxInvoker route them to its
 * Checker): calls on values, property reads and writes (`x.p`, `x?.p`, `x*.p`, `x.@p`), subscripts
 * (`x[i]`, `x[i] = v`), the operators that are method calls (arithmetic, bitwise, shifts, `<<`; `++`/`--`;
 * unary minus, plus and `~`; compound assignments), and `in` in @NonCPS code.
 */
class SandboxCustomizer extends CompilationCustomizer {
    SandboxCustomizer() { super(CompilePhase.SEMANTIC_ANALYSIS) }

    void call(SourceUnit source, GeneratorContext context, ClassNode classNode) {
        new SandboxTransformer(source: source).visitClass(classNode)
        new CpsTransformer(source: source).visitClass(classNode)
    }
}

/** `@NonCPS` (workflow-cps imports com.cloudbees.groovy.cps.NonCPS into every Jenkinsfile): the method runs as
 * plain Groovy, not CPS-transformed. */
@java.lang.annotation.Retention(java.lang.annotation.RetentionPolicy.RUNTIME)
@interface NonCPS {}

/**
 * The CPS program state, for what Jenkins does with it (workflow-cps, checked in its source):
 *
 * - Every local variable in scope on every CPS frame is part of the program. When no CPS thread can run
 *   (a step is running: `sh`, `sleep`, `node`, `build`, the file steps...), CpsThreadGroup.run calls
 *   saveProgramIfPossible, and with the default durability (MAX_SURVIVABILITY, persist with every step)
 *   saveProgram writes the whole thread group with a RiverWriter (JBoss Marshalling); a local that is not
 *   Serializable (java.util.regex.Matcher, an Iterator, a JsonSlurper result's LazyMap...) fails it with
 *   java.io.NotSerializableException, which propagateErrorToWorkflow turns into the build's failure.
 *   The harness records each frame's locals (declarations, assignments, parameters, for-in variables;
 *   block scopes end with their block) and, at each such step, refuses the first local whose value, or an
 *   element of a List/Map/Set it holds, is not Serializable. Locals of @NonCPS methods are never saved.
 * - `@NonCPS` methods are not CPS-transformed: calling a step, or a CPS-transformed method or closure,
 *   from one throws the CpsCallableInvocation into plain Groovy code, which CpsVmExecutorService reports
 *   as "expected to call X but wound up catching Y; see: https://jenkins.io/redirect/pipeline-cps-method-
 *   mismatches/" (CpsVmExecutorService.mismatchMessage); the result is wrong. The harness fails there.
 */
class CpsTransformer extends ClassCodeExpressionTransformer {
    SourceUnit source
    boolean nonCps = false
    String method = 'WorkflowScript'  // a closure's frame is named after the method it is written in

    SourceUnit getSourceUnit() { return source }

    // A static call: the Jenkinsfile's closures resolve even `this.x()` through their delegate (DELEGATE_ONLY)
    static Expression call(String method, List<Expression> args) {
        return new StaticMethodCallExpression(ClassHelper.make(CpsRuntime), method, new ArgumentListExpression(args))
    }

    static Statement callStatement(String method, List<Expression> args) {
        return new ExpressionStatement(call(method, args))
    }

    /** push frame; try { body } finally { pop frame } */
    static BlockStatement framed(Statement body, String name, List<Parameter> params, boolean closure, boolean nonCps,
                                 VariableScope scope) {
        MapExpression locals = new MapExpression()
        params.each { Parameter p -> locals.addMapEntryExpression(new ConstantExpression(p.name), new VariableExpression(p)) }
        BlockStatement block = new BlockStatement()
        block.variableScope = scope
        block.addStatement(callStatement('__cpsPushFrame', [new ConstantExpression(name), locals,
                                                            new ConstantExpression(closure), new ConstantExpression(nonCps)]))
        TryCatchStatement guarded = new TryCatchStatement(body, callStatement('__cpsPopFrame', []))
        block.addStatement(guarded)
        return block
    }

    @Override
    protected void visitConstructorOrMethod(MethodNode node, boolean isConstructor) {
        if (isConstructor || node.synthetic || node.name == 'main' || !(node.code instanceof BlockStatement)) {
            return
        }
        nonCps = node.annotations.any { AnnotationNode a -> a.classNode.nameWithoutPackage == 'NonCPS' }
        String name = node.name == 'run' ? 'WorkflowScript (top level)' : "WorkflowScript.${node.name}"
        method = name
        super.visitConstructorOrMethod(node, isConstructor)
        node.code = framed(node.code, name, (node.parameters ?: []) as List, false, nonCps,
                           ((BlockStatement) node.code).variableScope)
        nonCps = false
    }

    @Override
    void visitBlockStatement(BlockStatement block) {
        super.visitBlockStatement(block)
        if (nonCps || block.statements.isEmpty()) { return }
        // a block scope: its locals leave the program state when it ends
        BlockStatement inner = new BlockStatement(new ArrayList(block.statements), block.variableScope)
        block.statements.clear()
        block.addStatement(callStatement('__cpsEnterScope', []))
        block.addStatement(new TryCatchStatement(inner, callStatement('__cpsLeaveScope', [])))
    }

    @Override
    void visitForLoop(ForStatement loop) {
        super.visitForLoop(loop)
        if (nonCps || loop.variable == ForStatement.FOR_LOOP_DUMMY || !(loop.loopBlock instanceof BlockStatement)) {
            return
        }
        ((BlockStatement) loop.loopBlock).statements.add(0, callStatement('__cpsLocal', [
            new ConstantExpression(loop.variable.name), new VariableExpression(loop.variable)]))
    }

    Expression transform(Expression e) {
        if (e instanceof ClosureExpression) {
            ClosureExpression closure = (ClosureExpression) e
            closure.code.visit(this)
            List<Parameter> params = (closure.parameters ?: []) as List
            if (closure.parameters != null && closure.parameters.length == 0 && !closure.parameterSpecified) {
                params = []
            }
            VariableScope scope = closure.code instanceof BlockStatement ? ((BlockStatement) closure.code).variableScope : closure.variableScope
            closure.code = framed(closure.code, method, params, true, nonCps, scope)
            return closure
        }
        if (!nonCps && e instanceof DeclarationExpression && ((DeclarationExpression) e).leftExpression instanceof VariableExpression) {
            DeclarationExpression d = (DeclarationExpression) e
            Expression right = d.rightExpression.transformExpression(this)
            if (!(right instanceof EmptyExpression)) {
                d.rightExpression = call('__cpsLocal', [new ConstantExpression(d.variableExpression.name), right])
            }
            return d
        }
        if (!nonCps && e instanceof BinaryExpression && ((BinaryExpression) e).operation.text == '=' &&
                ((BinaryExpression) e).leftExpression instanceof VariableExpression) {
            BinaryExpression b = (BinaryExpression) e
            VariableExpression left = (VariableExpression) b.leftExpression
            Variable target = left.accessedVariable
            if (target instanceof VariableExpression || target instanceof Parameter) {
                b.rightExpression = call('__cpsLocal', [new ConstantExpression(left.name),
                                                        b.rightExpression.transformExpression(this)])
                return b
            }
        }
        return e.transformExpression(this)
    }
}

class SandboxTransformer extends ClassCodeExpressionTransformer {
    // (SandboxRuntime: the harness's own run-time checks, put in below; JsonOutput is checked there by overload)
    static final Map STATIC_WHITELIST = ['groovy.json.JsonOutput': ['prettyPrint', 'toJson'],
                                         'SandboxRuntime': SandboxRuntime.declaredMethods*.name]
    static final List BLACKLISTED_METHODS = ['execute', 'getClass', 'evaluate', 'getRawBuild', 'getMetaClass',
                                             'setMetaClass', 'invokeMethod']
    // an operator -> the method it calls (groovy-sandbox Ops.binaryOperatorMethods; groovy-cps Builder)
    static final Map<Integer, String> OPERATORS = [
        (Types.PLUS): 'plus', (Types.MINUS): 'minus', (Types.MULTIPLY): 'multiply', (Types.DIVIDE): 'div',
        (Types.INTDIV): 'intdiv', (Types.MOD): 'mod', (Types.POWER): 'power', (Types.BITWISE_OR): 'or',
        (Types.BITWISE_AND): 'and', (Types.BITWISE_XOR): 'xor', (Types.LEFT_SHIFT): 'leftShift',
        (Types.RIGHT_SHIFT): 'rightShift', (Types.RIGHT_SHIFT_UNSIGNED): 'rightShiftUnsigned']
    // a compound assignment -> its operator's method (groovy-sandbox Ops.compoundAssignmentToBinaryOperator)
    static final Map<Integer, String> COMPOUND = [
        (Types.PLUS_EQUAL): 'plus', (Types.MINUS_EQUAL): 'minus', (Types.MULTIPLY_EQUAL): 'multiply',
        (Types.DIVIDE_EQUAL): 'div', (Types.INTDIV_EQUAL): 'intdiv', (Types.MOD_EQUAL): 'mod',
        (Types.POWER_EQUAL): 'power', (Types.BITWISE_OR_EQUAL): 'or', (Types.BITWISE_AND_EQUAL): 'and',
        (Types.BITWISE_XOR_EQUAL): 'xor', (Types.LEFT_SHIFT_EQUAL): 'leftShift',
        (Types.RIGHT_SHIFT_EQUAL): 'rightShift', (Types.RIGHT_SHIFT_UNSIGNED_EQUAL): 'rightShiftUnsigned']
    SourceUnit source

    SourceUnit getSourceUnit() { return source }
    boolean nonCps = false

    @Override
    protected void visitConstructorOrMethod(MethodNode node, boolean isConstructor) {
        nonCps = node.annotations.any { AnnotationNode a -> a.classNode.nameWithoutPackage == 'NonCPS' }
        super.visitConstructorOrMethod(node, isConstructor)
        nonCps = false
    }

    static String argTypes(Expression args) {
        List exprs = args instanceof TupleExpression ? ((TupleExpression) args).expressions : [args]
        return exprs.collect { Expression e -> e instanceof ConstantExpression && e.value != null ?
            e.value.getClass().name : e.type.name }.join(' ')
    }

    Expression rejected(String signature, Expression at) {
        Expression call = new MethodCallExpression(new VariableExpression('this'), '__sandboxRejected',
                                                   new ArgumentListExpression(new ConstantExpression(signature)))
        call.sourcePosition = at
        return call
    }

    /** SandboxRuntime.METHOD(args...), at the position of `at`. */
    static Expression runtime(String method, List<Expression> args, Expression at) {
        Expression call = new StaticMethodCallExpression(ClassHelper.make(SandboxRuntime), method, new ArgumentListExpression(args))
        call.sourcePosition = at
        return call
    }

    static ConstantExpression constant(Object value) { return new ConstantExpression(value) }

    /** Another read of the variable `v` reads (a local, a parameter, a binding variable). */
    static VariableExpression reread(VariableExpression v) {
        VariableExpression again = new VariableExpression(v.accessedVariable ?: v)
        again.sourcePosition = v
        return again
    }

    /** The script's own properties and methods (`this.x`, an implicit receiver) are not checked: the sandbox
     * permits a Script's binding variables and its own methods (SandboxInterceptor.onGetProperty/
     * onSetProperty for a Script receiver; CpsWhitelist for CpsScript). */
    static boolean ownReceiver(Expression receiver, boolean implicitThis) {
        return implicitThis || (receiver instanceof VariableExpression &&
            (((VariableExpression) receiver).thisExpression || ((VariableExpression) receiver).superExpression))
    }

    /** CPS: workflow-cps translates the closure-taking DefaultGroovyMethods (CpsDefaultGroovyMethods), but
     * not a two-parameter closure given to sort/toSorted/unique/max/min/toUnique: that one becomes a
     * ClosureComparator/OrderBy, which groovy-cps does not translate (the TODOs in its
     * CpsDefaultGroovyMethodsTest). Jenkins then logs "expected to call ... but wound up catching
     * ...CpsClosure2.call" and the result is wrong; the harness fails there, as a Groovy error. */
    Expression cpsMismatch(Expression e) {
        if (nonCps || !(e instanceof MethodCallExpression)) { return null }  // @NonCPS code is plain Groovy
        MethodCallExpression call = (MethodCallExpression) e
        String name = call.methodAsString
        if (!(name in ['sort', 'toSorted', 'unique', 'toUnique', 'max', 'min'])) { return null }
        List args = call.arguments instanceof TupleExpression ? ((TupleExpression) call.arguments).expressions : []
        boolean comparator = args.any { Expression a ->
            a instanceof ClosureExpression && (((ClosureExpression) a).parameters?.length ?: 0) == 2 }
        if (!comparator) { return null }
        Expression fail = new MethodCallExpression(new VariableExpression('this'), '__cpsMismatch',
                                                   new ArgumentListExpression(new ConstantExpression(name)))
        fail.sourcePosition = e
        return fail
    }

    /** A call on a value (`text.trim()`, `list.subList(1, 2)`): its receiver's type is known only at run time,
     * so it goes through SandboxRuntime.call, which checks it against the whitelist first (as the sandbox's
     * GroovyInterceptor does for every call); a call on a class, through SandboxRuntime.staticCall. Calls on
     * `this` and implicit ones (steps, the script's own methods) are not checked. */
    Expression checkedCall(MethodCallExpression call) {
        Expression receiver = call.objectExpression
        if (ownReceiver(receiver, call.implicitThis) || call.methodAsString == null) { return call }
        List exprs = call.arguments instanceof TupleExpression ? ((TupleExpression) call.arguments).expressions :
            [call.arguments]
        if (exprs.any { it instanceof SpreadExpression || it instanceof SpreadMapExpression }) { return call }
        if (receiver instanceof ClassExpression) {
            return runtime('staticCall', [receiver, constant(call.methodAsString), new ListExpression(exprs)], call)
        }
        if (call.spreadSafe) {
            return runtime('spreadCall', [receiver, constant(call.methodAsString), new ListExpression(exprs)], call)
        }
        return runtime('call', [receiver, constant(call.methodAsString), constant(call.safe), new ListExpression(exprs)], call)
    }

    /** `x.p = v`, `x[i] = v`, `x.p += v`...: the write (and for a compound assignment the read and the
     * operator) checked; `local += v` becomes `local = local.plus(v)`, checked. Null when not one of those. */
    Expression assignment(BinaryExpression b) {
        int op = b.operation.type
        String compound = COMPOUND[op]
        if (op != Types.ASSIGN && compound == null) { return null }
        Expression left = b.leftExpression
        Expression value = transform(b.rightExpression)
        if (left instanceof AttributeExpression && compound == null) {
            AttributeExpression a = (AttributeExpression) left
            if (ownReceiver(a.objectExpression, a.implicitThis)) { return null }
            return runtime('setAttribute', [transform(a.objectExpression), transform(a.property), value, constant(a.safe)], b)
        }
        if (left instanceof PropertyExpression && !(left instanceof AttributeExpression)) {
            PropertyExpression p = (PropertyExpression) left
            if (ownReceiver(p.objectExpression, p.implicitThis) || p.objectExpression instanceof ClassExpression) { return null }
            Expression receiver = transform(p.objectExpression)
            return compound == null ?
                runtime('setProperty', [receiver, transform(p.property), value, constant(p.safe), constant(p.spreadSafe)], b) :
                runtime('compoundProperty', [receiver, transform(p.property), constant(compound), value, constant(p.safe)], b)
        }
        if (left instanceof BinaryExpression && ((BinaryExpression) left).operation.type == Types.LEFT_SQUARE_BRACKET) {
            BinaryExpression at = (BinaryExpression) left
            List<Expression> target = [transform(at.leftExpression), transform(at.rightExpression)]
            return compound == null ? runtime('putAt', target + [value], b) :
                runtime('compoundAt', target + [constant(compound), value], b)
        }
        if (left instanceof VariableExpression && compound != null) {
            BinaryExpression plain = new BinaryExpression(left, Token.newSymbol(Types.ASSIGN, b.operation.startLine,
                b.operation.startColumn), runtime('binaryOp', [reread((VariableExpression) left),
                                                               constant(compound), value], b))
            plain.sourcePosition = b
            return plain
        }
        return null
    }

    /** `a OP b` for an operator that is a method call (arithmetic, bitwise, shifts; `in` in @NonCPS code):
     * checked. Comparisons, `=~`, `==~`, `in` (CPS), `&&`, `||`, instanceof: left as they are (in CPS code
     * they are whitelisted ScriptBytecodeAdapter calls, see SandboxRuntime). */
    Expression operator(BinaryExpression b) {
        int op = b.operation.type
        if (op == Types.LEFT_SQUARE_BRACKET) {
            return runtime('getAt', [transform(b.leftExpression), transform(b.rightExpression)], b)
        }
        if (OPERATORS[op] != null) {
            return runtime('binaryOp', [transform(b.leftExpression), constant(OPERATORS[op]), transform(b.rightExpression)], b)
        }
        if (op == Types.KEYWORD_IN && nonCps) {
            return runtime('isCase', [transform(b.leftExpression), transform(b.rightExpression)], b)
        }
        return null
    }

    /** `x++`, `--x.p`, `x[i]++`: the value's next()/previous() checked (groovy-cps ExcrementOperatorBlock). */
    Expression stepped(Expression e, Expression operand, Token operation, boolean prefix) {
        String method = operation.type == Types.PLUS_PLUS ? 'next' : 'previous'
        if (operand instanceof VariableExpression) {  // the value before, then the expression itself
            return runtime('stepped', [reread((VariableExpression) operand), constant(method), e], e)
        }
        if (operand instanceof PropertyExpression && !(operand instanceof AttributeExpression)) {
            PropertyExpression p = (PropertyExpression) operand
            if (ownReceiver(p.objectExpression, p.implicitThis) || p.objectExpression instanceof ClassExpression) { return null }
            return runtime('steppedProperty', [transform(p.objectExpression), transform(p.property), constant(method),
                                               constant(prefix), constant(p.safe)], e)
        }
        if (operand instanceof BinaryExpression && ((BinaryExpression) operand).operation.type == Types.LEFT_SQUARE_BRACKET) {
            BinaryExpression at = (BinaryExpression) operand
            return runtime('steppedAt', [transform(at.leftExpression), transform(at.rightExpression), constant(method),
                                         constant(prefix)], e)
        }
        return null
    }

    /** A value's property read `x.p` / `x?.p` / `x*.p` / `x.@p`: checked (SandboxRuntime.getProperty). */
    Expression propertyRead(PropertyExpression p) {
        if (ownReceiver(p.objectExpression, p.implicitThis)) { return null }
        if (p.objectExpression instanceof ClassExpression) {
            return rejected("staticField ${p.objectExpression.type.name} ${p.propertyAsString}", p)
        }
        if (p instanceof AttributeExpression) {
            return runtime('getAttribute', [transform(p.objectExpression), transform(p.property), constant(p.safe)], p)
        }
        return runtime('getProperty', [transform(p.objectExpression), transform(p.property), constant(p.safe),
                                       constant(p.spreadSafe)], p)
    }

    Expression transform(Expression e) {
        if (e instanceof ClosureExpression) {  // a closure's body is code too (the steps blocks are closures)
            ((ClosureExpression) e).code.visit(this)
            return e
        }
        if (e instanceof ConstructorCallExpression && !((ConstructorCallExpression) e).specialCall) {
            return rejected("new ${e.type.name} ${argTypes(((ConstructorCallExpression) e).arguments)}".trim(), e)
        }
        if (e instanceof StaticMethodCallExpression) {
            StaticMethodCallExpression call = (StaticMethodCallExpression) e
            if (!(call.method in (STATIC_WHITELIST[call.ownerType.name] ?: []))) {
                return rejected("staticMethod ${call.ownerType.name} ${call.method}", e)
            }
        }
        if (e instanceof MethodCallExpression) {
            MethodCallExpression call = (MethodCallExpression) e
            String name = call.methodAsString
            if (call.objectExpression instanceof ClassExpression &&
                    !(name in (STATIC_WHITELIST[call.objectExpression.type.name] ?: []))) {
                return rejected("staticMethod ${call.objectExpression.type.name} ${name} " +
                                argTypes(call.arguments), e)
            }
            if (name in BLACKLISTED_METHODS && !(call.objectExpression instanceof VariableExpression &&
                                                   ((VariableExpression) call.objectExpression).thisExpression)) {
                return rejected("method ${call.objectExpression.type.name} ${name}", e)
            }
            Expression mismatch = cpsMismatch(e)
            if (mismatch != null) {
                return mismatch
            }
            return checkedCall((MethodCallExpression) e.transformExpression(this))
        }
        if (e instanceof BinaryExpression && !(e instanceof DeclarationExpression)) {
            Expression checked = assignment((BinaryExpression) e) ?: operator((BinaryExpression) e)
            if (checked != null) { return checked }
        }
        if (e instanceof PostfixExpression) {
            PostfixExpression p = (PostfixExpression) e
            Expression checked = stepped(e, p.expression, p.operation, false)
            if (checked != null) { return checked }
        }
        if (e instanceof PrefixExpression) {
            PrefixExpression p = (PrefixExpression) e
            Expression checked = stepped(e, p.expression, p.operation, true)
            if (checked != null) { return checked }
        }
        if (e instanceof UnaryMinusExpression) {
            return runtime('unary', [transform(((UnaryMinusExpression) e).expression), constant('negative')], e)
        }
        if (e instanceof UnaryPlusExpression) {
            return runtime('unary', [transform(((UnaryPlusExpression) e).expression), constant('positive')], e)
        }
        if (e instanceof BitwiseNegationExpression) {
            return runtime('unary', [transform(((BitwiseNegationExpression) e).expression), constant('bitwiseNegate')], e)
        }
        if (e instanceof PropertyExpression) {
            Expression checked = propertyRead((PropertyExpression) e)
            if (checked != null) { return checked }
        }
        return e.transformExpression(this)
    }
}

/** What CpsTransformer's calls record: the CPS frames of the build whose script runs now (a downstream
 * build's script runs inside its parent's `build` step, with frames of its own). */
class CpsRuntime {
    static Build current


    static void __cpsPushFrame(String name, Map locals, boolean closure, boolean nonCps) {
        Map caller = current.cpsFrames ? current.cpsFrames.last() : null
        if (caller?.nonCps && !nonCps) {  // CPS code called from plain Groovy
            throw new IllegalStateException(CpsRules.mismatch(caller.name as String,
                closure ? 'org.jenkinsci.plugins.workflow.cps.CpsClosure2.call' : name))
        }
        current.cpsFrames << [name: name, closure: closure, nonCps: nonCps, scopes: [new LinkedHashMap(locals)]]
    }

    static void __cpsPopFrame() { current.cpsFrames.remove(current.cpsFrames.size() - 1) }

    static void __cpsEnterScope() { if (current.cpsFrames) { current.cpsFrames.last().scopes << [:] } }

    static void __cpsLeaveScope() {
        if (current.cpsFrames) {
            List scopes = current.cpsFrames.last().scopes
            if (scopes.size() > 1) { scopes.remove(scopes.size() - 1) }
        }
    }

    /** A local is declared or assigned: where it lives (this frame's scopes, then the frames a closure is in). */
    static Object __cpsLocal(String name, Object value) {
        for (int f = current.cpsFrames.size() - 1; f >= 0; f--) {
            List scopes = current.cpsFrames[f].scopes
            for (int i = scopes.size() - 1; i >= 0; i--) {
                if (scopes[i].containsKey(name)) { scopes[i][name] = value; return value }
            }
            if (!current.cpsFrames[f].closure) { break }
        }
        if (current.cpsFrames) { current.cpsFrames.last().scopes.last()[name] = value }
        return value
    }

}

class CpsRules {
    static String mismatch(String expected, String actual) {
        String callee = expected.startsWith('WorkflowScript') ? expected : "WorkflowScript.${expected}"
        return "expected to call ${callee} but wound up catching ${actual}; see: " +
               'https://jenkins.io/redirect/pipeline-cps-method-mismatches/ (a @NonCPS method must not call ' +
               'steps or CPS-transformed code)'
    }

    /** The class name of the first value that JBoss Marshalling could not write, or null. */
    static String notSerializable(Object value, int depth = 0) {
        if (value == null || depth > 20) { return null }
        if (!(value instanceof Serializable)) { return value.getClass().name }
        if (value instanceof Map) {
            for (Map.Entry entry : ((Map) value).entrySet()) {
                String bad = notSerializable(entry.key, depth + 1) ?: notSerializable(entry.value, depth + 1)
                if (bad != null) { return bad }
            }
        } else if (value instanceof Collection) {
            for (Object item : (Collection) value) {
                String bad = notSerializable(item, depth + 1)
                if (bad != null) { return bad }
            }
        }
        return null
    }
}

/**
 * The script-security sandbox at run time. Pipeline code runs sandboxed: groovy-cps' SandboxInvoker hands
 * every call, property read and write, subscript and operator of a script to groovy-sandbox's Checker
 * (checkedCall, checkedGetProperty, checkedSetProperty, checkedGetArray, checkedSetArray; an operator is
 * the call of its method: Builder.plus -> `lhs.plus(rhs)`, Checker.checkedBinaryOp; `x++` calls next()),
 * and the Checker asks script-security's SandboxInterceptor (onMethodCall, onStaticCall, onGetProperty,
 * onSetProperty, onGetAttribute, onSetAttribute, onGetArray, onSetArray), which looks the target up as
 * GroovyCallSiteSelector does and permits it only if the whitelist lists it. Modelled here (sources:
 * script-security SandboxInterceptor and GroovyCallSiteSelector, groovy-sandbox Checker and
 * SandboxTransformer, groovy-cps Builder and SandboxInvoker, workflow-cps CpsWhitelist):
 *
 * - a call: the Java method GroovyCallSiteSelector.method picks (the receiver's types, supertypes first;
 *   in each the most specific declared method the arguments fit; a GString's String methods last) is
 *   permitted iff `method DECLARING NAME PARAMS` is listed (`staticMethod` for a static one). With none, a
 *   Number's arithmetic (plus, minus, multiply, div, compareTo, or, and, xor, intdiv, mod, leftShift,
 *   rightShift, rightShiftUnsigned) is permitted, else the GDK method each of DefaultGroovyMethods,
 *   StringGroovyMethods... selects for (receiver, args...): permitted if one is listed, else the first is
 *   refused; a Map's Closure element is called through its `call`. A static call on a class: the static
 *   method staticMethod selects, or "No such static method found".
 * - a property read `x.p` (Checker.checkedGetProperty, onGetProperty): null with `?.` is null; on a
 *   Collection (but for Closure's built-in property names) it is read on every element; on a Map it is
 *   `get(p)`; else the first that exists of getP(), a boolean isP(), the GDK getP(x)/isP(x), the field p,
 *   a getProperty(String) that is not Groovy's generated one, decides (permitted if listed, else refused
 *   as that method or `field`); with none "No such field found: field CLASS p". A write (onSetProperty)
 *   likewise: a Map's `put`, setP (the only one-argument setP, else the one the value fits),
 *   setProperty(String, Object), the field.
 * - a subscript `x[i]` (onGetArray): an array with an int index is permitted; else x's own getAt(i), else
 *   the GDK getAt(x, i) of the first GDK class that has one, decides; with none "No such getAt method
 *   found". `x[i] = v` likewise with putAt. Compound assignments (`+=`...) are a read, the operator and a
 *   write, each checked (Checker.checkedSetProperty/checkedSetArray with an op other than ASSIGN).
 * - comparisons, `in`, `=~` and `==~` become static calls of ScriptBytecodeAdapter (compareEqual, isCase,
 *   findRegex, matchRegex...) in CPS code, all on the whitelist: permitted; in @NonCPS code (groovy-sandbox
 *   SandboxTransformer) `a in b` is `b.isCase(a)`, checked. Unary minus/plus and `~` go through
 *   Checker.checkedUnaryMinus/checkedUnaryPlus/checkedBitwiseNegate (a plain number is negated, else
 *   negative()/positive()/bitwiseNegate() is checked).
 * - a null receiver is not checked (groovy-sandbox InvokerChain skips the interceptors for null).
 *
 * WHITELIST is the part of script-security's generic-whitelist (src/main/resources/org/jenkinsci/plugins/
 * scriptsecurity/sandbox/whitelists/generic-whitelist, checked at commit
 * a5f0130aa482d488cd9820b09de7dcd69cfce0c7: every line below is in it verbatim) that the Jenkinsfiles and
 * the harness's own tests use; anything else is refused as the sandbox refuses it without approval
 * ("Scripts not permitted to use ..."). The harness's stand-ins are checked as what they stand for: `params`
 * is an unmodifiable java.util.Map (workflow-cps ParamsVariable), `currentBuild` and `build`'s results are
 * RunWrapper (its @Whitelisted methods; getRawBuild is not, and is blacklisted), `env` is EnvActionImpl
 * (CpsWhitelist permits its getProperty/setProperty, i.e. `env.X` reads and writes; `env['X']` is the GDK
 * getAt(Object, String), blacklisted by SECURITY-538, and so is putAt). Not modelled: casts
 * (Checker.checkedCast: the Jenkinsfiles cast only to String, primitives and the interfaces their values
 * already implement, which it never checks), closures' own property resolution through owner/delegate.
 */
class SandboxRuntime {
    static final Set<String> WHITELIST = ([
        'method groovy.lang.Closure call java.lang.Object',
        'method groovy.lang.Closure call java.lang.Object[]',
        'method groovy.lang.GString plus java.lang.String',
        'method java.lang.CharSequence length',
        'method java.lang.Comparable compareTo java.lang.Object',
        'method java.lang.Iterable iterator',
        'method java.lang.Object equals java.lang.Object',
        'method java.lang.Object toString',
        'method java.lang.String contains java.lang.CharSequence',
        'method java.lang.String endsWith java.lang.String',
        'method java.lang.String indexOf java.lang.String',
        'method java.lang.String isEmpty',
        'method java.lang.String replace java.lang.CharSequence java.lang.CharSequence',
        'method java.lang.String replaceAll java.lang.String java.lang.String',
        'method java.lang.String split java.lang.String',
        'method java.lang.String startsWith java.lang.String',
        'method java.lang.String substring int',
        'method java.lang.String substring int int',
        'method java.lang.String toLowerCase',
        'method java.lang.String toUpperCase',
        'method java.lang.String trim',
        'method java.util.Collection add java.lang.Object',
        'method java.util.Collection isEmpty',
        'method java.util.Collection size',
        'method java.util.Iterator hasNext',
        'method java.util.Iterator next',
        'method java.util.List add int java.lang.Object',
        'method java.util.List get int',
        'method java.util.List subList int int',
        'method java.util.Map containsKey java.lang.Object',
        'method java.util.Map get java.lang.Object',
        'method java.util.Map keySet',
        'method java.util.Map put java.lang.Object java.lang.Object',
        'method java.util.Map values',
        'method java.util.regex.MatchResult group int',
        'method java.util.regex.Matcher find',
        'method java.util.regex.Matcher matches',
        'staticMethod groovy.json.JsonOutput prettyPrint java.lang.String',
        'staticMethod groovy.json.JsonOutput toJson java.lang.Boolean',
        'staticMethod groovy.json.JsonOutput toJson java.lang.Number',
        'staticMethod groovy.json.JsonOutput toJson java.lang.String',
        'staticMethod groovy.json.JsonOutput toJson java.util.Map',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods collect java.util.Collection groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods each java.lang.Iterable groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods each java.lang.Object groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods each java.util.List groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods each java.util.Map groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods findAll java.lang.Object[] groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods findAll java.util.Collection groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods findAll java.util.List groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods getAt java.util.List int',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods getAt java.util.Map java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods getAt java.util.regex.Matcher int',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods isCase java.util.Collection java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods join java.lang.Iterable java.lang.String',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods join java.util.Collection java.lang.String',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods leftShift java.util.Collection java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods leftShift java.util.List java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods next java.lang.Number',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods plus java.lang.String java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods putAt java.util.List int java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods putAt java.util.Map java.lang.Object java.lang.Object',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods sort java.lang.Iterable groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.DefaultGroovyMethods sort java.util.Collection groovy.lang.Closure',
        'staticMethod org.codehaus.groovy.runtime.StringGroovyMethods readLines java.lang.CharSequence',
        'staticMethod org.codehaus.groovy.runtime.StringGroovyMethods readLines java.lang.String',
    ] as Set).asImmutable()

    // SandboxInterceptor.DGM_CLASSES, in its order
    static final List<Class> DGM_CLASSES = ['DefaultGroovyMethods', 'StringGroovyMethods', 'SwingGroovyMethods',
        'SqlGroovyMethods', 'XmlGroovyMethods', 'EncodingGroovyMethods', 'DateGroovyMethods', 'ProcessGroovyMethods']
        .collect { String n -> try { Class.forName("org.codehaus.groovy.runtime.${n}") } catch (ClassNotFoundException ignored) { null } }
        .findAll { it != null }.asImmutable()
    // SandboxInterceptor.NUMBER_MATH_NAMES: a Number's synthetic arithmetic (Integer.plus(Integer)...)
    static final Set<String> NUMBER_MATH = (['plus', 'minus', 'multiply', 'div', 'compareTo', 'or', 'and', 'xor',
        'intdiv', 'mod', 'leftShift', 'rightShift', 'rightShiftUnsigned'] as Set).asImmutable()
    // groovy-sandbox ClosureSupport.BUILTIN_PROPERTIES
    static final Set<String> CLOSURE_PROPERTIES = (['delegate', 'owner', 'maximumNumberOfParameters', 'parameterTypes',
        'metaClass', 'class', 'directive', 'resolveStrategy', 'thisObject'] as Set).asImmutable()
    static final String RUN_WRAPPER = 'org.jenkinsci.plugins.workflow.support.steps.build.RunWrapper'
    static final String ENV_ACTION = 'org.jenkinsci.plugins.workflow.cps.EnvActionImpl'

    // --- the entry points SandboxTransformer puts in the script -------------------------------------------
    static Object call(Object receiver, String name, boolean safe, List args) {
        if (receiver == null && safe) { return null }
        Object[] given = args as Object[]
        if (receiver != null) { checkCall(receiver, name, given) }
        return InvokerHelper.invokeMethod(receiver, name, given)
    }

    static Object spreadCall(Object receiver, String name, List args) {
        if (receiver == null) { return null }
        List results = []
        InvokerHelper.asIterator(receiver).each { Object item -> if (item != null) { results << call(item, name, false, args) } }
        return results
    }

    static Object staticCall(Class type, String name, List args) {
        Object[] given = args as Object[]
        checkStatic(type, name, given)
        return InvokerHelper.invokeStaticMethod(type, name, given)
    }

    static Object getProperty(Object receiver, String name, boolean safe, boolean spread) {
        if (receiver == null) { return safe ? null : InvokerHelper.getProperty(null, name) }
        if (spread || (receiver instanceof Collection && !(name in CLOSURE_PROPERTIES))) {
            List values = []
            InvokerHelper.asIterator(receiver).each { Object item -> if (item != null) { values << getProperty(item, name, true, false) } }
            return values
        }
        if (receiver instanceof Map) {
            checkCall(receiver, 'get', [name] as Object[])
            return ((Map) receiver).get(name)
        }
        checkGetProperty(receiver, name)
        return InvokerHelper.getProperty(receiver, name)
    }

    static Object setProperty(Object receiver, String name, Object value, boolean safe, boolean spread) {
        if (receiver == null && safe) { return value }
        if (spread) {
            InvokerHelper.asIterator(receiver).each { Object item -> if (item != null) { setProperty(item, name, value, true, false) } }
            return value
        }
        if (receiver instanceof Map) {
            checkCall(receiver, 'put', [name, value] as Object[])
            ((Map) receiver).put(name, value)
            return value
        }
        if (receiver != null) { checkSetProperty(receiver, name, value) }
        InvokerHelper.setProperty(receiver, name, value)
        return value
    }

    static Object compoundProperty(Object receiver, String name, String operator, Object value, boolean safe) {
        return setProperty(receiver, name, binaryOp(getProperty(receiver, name, safe, false), operator, value), safe, false)
    }

    static Object getAttribute(Object receiver, String name, boolean safe) {
        if (receiver == null) { return safe ? null : InvokerHelper.getAttribute(null, name) }
        checkField(receiver, name)
        return InvokerHelper.getAttribute(receiver, name)
    }

    static Object setAttribute(Object receiver, String name, Object value, boolean safe) {
        if (receiver == null && safe) { return value }
        if (receiver != null) { checkField(receiver, name) }
        InvokerHelper.setAttribute(receiver, name, value)
        return value
    }

    static Object getAt(Object receiver, Object index) {
        if (receiver != null) { checkSubscript(receiver, 'getAt', [index] as Object[]) }
        return InvokerHelper.invokeMethod(receiver, 'getAt', [index] as Object[])
    }

    static Object putAt(Object receiver, Object index, Object value) {
        if (receiver != null) { checkSubscript(receiver, 'putAt', [index, value] as Object[]) }
        InvokerHelper.invokeMethod(receiver, 'putAt', [index, value] as Object[])
        return value
    }

    static Object compoundAt(Object receiver, Object index, String operator, Object value) {
        return putAt(receiver, index, binaryOp(getAt(receiver, index), operator, value))
    }

    /** `lhs OP rhs` is `lhs.METHOD(rhs)` (Checker.checkedBinaryOp). */
    static Object binaryOp(Object lhs, String method, Object rhs) {
        if (lhs != null) { checkCall(lhs, method, [rhs] as Object[]) }
        return InvokerHelper.invokeMethod(lhs, method, [rhs] as Object[])
    }

    /** @NonCPS `a in b` (groovy-sandbox SandboxTransformer): `b.isCase(a)`, checked. */
    static boolean isCase(Object item, Object container) {
        if (container != null) { checkCall(container, 'isCase', [item] as Object[]) }
        return DefaultTypeTransformation.castToBoolean(InvokerHelper.invokeMethod(container, 'isCase', [item] as Object[]))
    }

    /** `x++`/`--x` on a local: the new value is x.next()/previous() (groovy-cps ExcrementOperatorBlock),
     * checked; `result` is what the expression gave (the increment is already done). */
    static Object stepped(Object before, String method, Object result) {
        if (before != null) { checkCall(before, method, [] as Object[]) }
        return result
    }

    static Object steppedProperty(Object receiver, String name, String method, boolean prefix, boolean safe) {
        Object before = getProperty(receiver, name, safe, false)
        Object after = call(before, method, false, [])
        setProperty(receiver, name, after, safe, false)
        return prefix ? after : before
    }

    static Object steppedAt(Object receiver, Object index, String method, boolean prefix) {
        Object before = getAt(receiver, index)
        Object after = call(before, method, false, [])
        putAt(receiver, index, after)
        return prefix ? after : before
    }

    // Checker.checkedUnaryMinus/checkedUnaryPlus/checkedBitwiseNegate
    static Object unary(Object value, String operator) {
        if (value instanceof Integer || value instanceof Long || value instanceof Double || value instanceof Float ||
                value instanceof Short || value instanceof Byte) {
            return operator == 'negative' ? InvokerHelper.unaryMinus(value) :
                operator == 'positive' ? InvokerHelper.unaryPlus(value) : InvokerHelper.bitwiseNegate(value)
        }
        if (value instanceof ArrayList) { return value.collect { Object item -> unary(item, operator) } }
        if (operator == 'bitwiseNegate' && value instanceof CharSequence) {
            return staticCall(org.codehaus.groovy.runtime.StringGroovyMethods, 'bitwiseNegate', [value.toString()])
        }
        String method = (value instanceof BigInteger || value instanceof BigDecimal) && operator == 'negative' ? 'negate' :
            (value instanceof BigInteger && operator == 'bitwiseNegate' ? 'not' : operator)
        return call(value, method, false, [])
    }

    // --- the checks (SandboxInterceptor) ------------------------------------------------------------------
    static String className(Class c) { return c.array ? className(c.componentType) + '[]' : c.name }

    static String argTypes(Object[] args) {
        return args.collect { Object a -> ' ' + (a == null ? 'null' : className(a.getClass())) }.join('')
    }

    static String signature(java.lang.reflect.Method m) {
        String kind = java.lang.reflect.Modifier.isStatic(m.modifiers) ? 'staticMethod' : 'method'
        return "${kind} ${className(m.declaringClass)} ${m.name}" + m.parameterTypes.collect { ' ' + className(it) }.join('')
    }

    static String signature(java.lang.reflect.Field f) {
        String kind = java.lang.reflect.Modifier.isStatic(f.modifiers) ? 'staticField' : 'field'
        return "${kind} ${className(f.declaringClass)} ${f.name}"
    }

    static boolean permits(Object member) { return signature(member).toString() in WHITELIST }

    static RejectedAccessException reject(Object member) { return new RejectedAccessException(signature(member).toString()) }

    /** The stand-ins: true when permitted, false when the stand-in has no say, or a refusal thrown. */
    static boolean standIn(Object receiver, String method, Object[] args) {
        if (receiver instanceof RunWrapper) {
            if (method == 'getRawBuild') { throw new RejectedAccessException("method ${RUN_WRAPPER} getRawBuild") }
            return RunWrapper.WHITELISTED.contains(method)
        }
        if (receiver instanceof EnvProxy) {
            if (method in ['getProperty', 'setProperty']) { return true }  // CpsWhitelist
            if (method in ['toString', 'equals', 'hashCode']) { return false }
            throw new RejectedAccessException("method ${ENV_ACTION} ${method}${argTypes(args)}")
        }
        return false
    }

    static void checkCall(Object receiver, String name, Object[] args) {
        if (receiver instanceof Class) { checkStatic((Class) receiver, name, args); return }
        if (standIn(receiver, name, args)) { return }
        java.lang.reflect.Method m = CallSiteSelector.method(receiver, name, args)
        if (m != null) {
            if (!permits(m)) { throw reject(m) }
            return
        }
        if (receiver instanceof Number && name in NUMBER_MATH) { return }
        Object[] selfArgs = ([receiver] + (args as List)) as Object[]
        java.lang.reflect.Method first = null
        for (Class dgm : DGM_CLASSES) {
            java.lang.reflect.Method found = CallSiteSelector.staticMethod(dgm, name, selfArgs)
            if (found != null) {
                if (permits(found)) { return }
                first = first ?: found
            }
        }
        if (first != null) { throw reject(first) }
        if (receiver instanceof Map && ((Map) receiver).get(name) instanceof Closure) {
            checkCall(((Map) receiver).get(name), 'call', args)
        }
        // else no such method: Groovy's MissingMethodException when it is called
    }

    static void checkStatic(Class type, String name, Object[] args) {
        java.lang.reflect.Method m = CallSiteSelector.staticMethod(type, name, args)
        if (m == null) {
            throw RejectedAccessException.raw("No such static method found: staticMethod ${className(type)} ${name}${argTypes(args)}")
        }
        if (!permits(m)) { throw reject(m) }
    }

    static void checkGetProperty(Object receiver, String name) {
        if (receiver instanceof EnvProxy) { return }  // EnvActionImpl.getProperty (CpsWhitelist)
        if (receiver instanceof RunWrapper) { standIn(receiver, 'get' + MetaClassHelper.capitalize(name), [] as Object[]); return }
        if (name == 'length' && receiver.getClass().array) { return }
        Object[] none = [] as Object[]
        List candidates = []
        String getter = 'get' + MetaClassHelper.capitalize(name)
        String isGetter = 'is' + MetaClassHelper.capitalize(name)
        candidates << CallSiteSelector.method(receiver, getter, none)
        java.lang.reflect.Method is = CallSiteSelector.method(receiver, isGetter, none)
        candidates << (is?.returnType == boolean ? is : null)
        Object[] self = [receiver] as Object[]
        for (Class dgm : DGM_CLASSES) {
            candidates << CallSiteSelector.staticMethod(dgm, getter, self)
            java.lang.reflect.Method dgmIs = CallSiteSelector.staticMethod(dgm, isGetter, self)
            candidates << (dgmIs?.returnType == boolean ? dgmIs : null)
        }
        candidates << CallSiteSelector.field(receiver, name)
        candidates << generatedOrNull(receiver, CallSiteSelector.method(receiver, 'getProperty', [name] as Object[]))
        decide(receiver, name, candidates.findAll { it != null })
    }

    static void checkSetProperty(Object receiver, String name, Object value) {
        if (receiver instanceof EnvProxy) { return }  // EnvActionImpl.setProperty (CpsWhitelist)
        if (receiver instanceof RunWrapper) { standIn(receiver, 'set' + MetaClassHelper.capitalize(name), [value] as Object[]); return }
        String setter = 'set' + MetaClassHelper.capitalize(name)
        List<java.lang.reflect.Method> setters = CallSiteSelector.methods(receiver, setter) { java.lang.reflect.Method m -> m.parameterCount == 1 }
        List candidates = [setters.size() == 1 ? setters[0] : CallSiteSelector.method(receiver, setter, [value] as Object[])]
        candidates << generatedOrNull(receiver, CallSiteSelector.method(receiver, 'setProperty', [name, value] as Object[]))
        candidates << CallSiteSelector.field(receiver, name)
        decide(receiver, name, candidates.findAll { it != null })
    }

    /** The first candidate that is permitted lets it through; else the first found is refused. */
    static void decide(Object receiver, String name, List candidates) {
        if (candidates.any { permits(it) }) { return }
        if (candidates) { throw reject(candidates[0]) }
        throw new MissingPropertyException("No such field found: field ${className(receiver.getClass())} ${name}")
    }

    // SandboxInterceptor.isSyntheticMethod: Groovy's generated getProperty/setProperty do not count
    static java.lang.reflect.Method generatedOrNull(Object receiver, java.lang.reflect.Method m) {
        if (m == null) { return null }
        try {
            return receiver.getClass().getDeclaredMethod(m.name, m.parameterTypes).synthetic ? null : m
        } catch (NoSuchMethodException ignored) {
            return m
        }
    }

    static void checkField(Object receiver, String name) {
        java.lang.reflect.Field f = CallSiteSelector.field(receiver, name)
        if (f == null) { throw new MissingPropertyException("No such field found: field ${className(receiver.getClass())} ${name}") }
        if (!permits(f)) { throw reject(f) }
    }

    static void checkSubscript(Object receiver, String method, Object[] args) {
        if (receiver.getClass().array && args[0] instanceof Integer) { return }
        java.lang.reflect.Method own = CallSiteSelector.method(receiver, method, args)
        if (own != null) {
            if (!permits(own)) { throw reject(own) }
            return
        }
        Object[] selfArgs = ([receiver] + (args as List)) as Object[]
        for (Class dgm : DGM_CLASSES) {
            java.lang.reflect.Method found = CallSiteSelector.staticMethod(dgm, method, selfArgs)
            if (found != null) {
                if (!permits(found)) { throw reject(found) }
                return
            }
        }
        String what = method == 'getAt' ? "method ${className(receiver.getClass())}[${argTypes(args).trim()}]" :
            "putAt method ${className(receiver.getClass())}[${argTypes([args[0]] as Object[]).trim()}]=${argTypes([args[1]] as Object[]).trim()}"
        throw RejectedAccessException.raw("No such ${method} method found: ${what}")
    }
}

/** script-security's GroovyCallSiteSelector: which method, field or static method a call would reach, as the
 * sandbox looks it up (the most general type that declares a fitting method, supertypes first). */
class CallSiteSelector {
    static Set<Class> types(Class c) {
        Set<Class> found = new LinkedHashSet<Class>()
        visit(found, c)
        return found
    }

    private static void visit(Set<Class> found, Class c) {
        if (c.superclass != null) { visit(found, c.superclass) }
        c.interfaces.each { Class i -> visit(found, i) }
        found << c  // supertypes first
    }

    static Class wrap(Class c) { return c.primitive ? ClassHelper.getWrapper(ClassHelper.make(c)).typeClass : c }

    static boolean fits(Class param, Object arg) {
        if (arg == null) { return !param.primitive }
        if (param.isInstance(arg)) { return true }
        Class wrapped = wrap(param)
        if (param.primitive && (wrapped.isInstance(arg) || (wrapped == Long && arg instanceof Integer) ||
                (wrapped == Integer && arg instanceof Long && arg >= Integer.MIN_VALUE && arg <= Integer.MAX_VALUE))) {
            return true
        }
        return param == String && arg instanceof GString
    }

    static boolean varArgs(java.lang.reflect.Method m, Object[] args) {
        if (m.varArgs) { return true }
        Class[] params = m.parameterTypes
        if (params.length < 2 || !params[-1].array || args.length <= params.length) { return false }
        Class component = params[-1].componentType
        return (params.length - 1..<args.length).every { int i -> args[i] == null || component.isAssignableFrom(args[i].getClass()) }
    }

    static boolean matches(Class[] params, Object[] args, boolean varargs) {
        Object[] actual = args
        if (varargs) {
            int fixed = params.length - 1
            int rest = args.length - fixed
            if (rest >= 0 && !(rest == 1 && params[fixed].isInstance(args[fixed]))) {
                Class component = wrap(params[fixed].componentType)
                if (rest == 0 || component.isInstance(args[fixed]) || args[fixed] == null) {
                    actual = (args.take(fixed) + [DefaultTypeTransformation.castToVargsArray(args, fixed, params[fixed])]) as Object[]
                }
            }
        }
        if (actual.length != params.length) { return false }
        return (0..<params.length).every { int i -> fits(params[i], actual[i]) }
    }

    static boolean moreSpecific(java.lang.reflect.Method more, boolean moreVar, java.lang.reflect.Method less, boolean lessVar) {
        if (lessVar && !moreVar) { return true }
        if (!lessVar && moreVar) { return false }
        for (int i = 0; i < more.parameterTypes.length; i++) {
            Class m = wrap(more.parameterTypes[i])
            Class l = wrap(less.parameterTypes[i])
            if (m.isAssignableFrom(l)) { return false }
            if (l.isAssignableFrom(m)) { return true }
            if (m == Long && l == Integer) { return false }
            if (m == Integer && l == Long) { return true }
        }
        return more.toString() > less.toString()  // incomparable: script-security picks by name too
    }

    static java.lang.reflect.Method findMatching(Class type, String name, Object[] args) {
        java.lang.reflect.Method candidate = null
        for (java.lang.reflect.Method m : type.declaredMethods) {
            boolean var = varArgs(m, args)
            if (m.name == name && m.parameterTypes.length <= args.length + 1 && matches(m.parameterTypes, args, var)) {
                if (candidate == null || moreSpecific(m, var, candidate, varArgs(candidate, args))) { candidate = m }
            }
        }
        return candidate
    }

    static java.lang.reflect.Method method(Object receiver, String name, Object[] args) {
        for (Class c : types(receiver.getClass())) {
            java.lang.reflect.Method found = findMatching(c, name, args)
            if (found != null) { return found }
        }
        return receiver instanceof GString ? findMatching(String, name, args) : null  // cf. GString.invokeMethod
    }

    static List<java.lang.reflect.Method> methods(Object receiver, String name, Closure filter) {
        List found = types(receiver.getClass()).collectMany { Class c ->
            c.declaredMethods.findAll { java.lang.reflect.Method m -> m.name == name && filter(m) } as List }
        return receiver instanceof GString ? found + String.declaredMethods.findAll { it.name == name && filter(it) } : found
    }

    static java.lang.reflect.Method staticMethod(Class type, String name, Object[] args) { return findMatching(type, name, args) }

    static java.lang.reflect.Field field(Object receiver, String name) {
        for (Class c : types(receiver.getClass())) {
            java.lang.reflect.Field f = c.declaredFields.find { it.name == name }
            if (f != null) { return f }
        }
        return null
    }
}

/** The compile-time failure of a declarative file (validation before anything runs). */
class CompileError extends RuntimeException {
    CompileError(String message) { super(message) }
}

class Results {
    static final List ORDER = ['SUCCESS', 'UNSTABLE', 'FAILURE', 'NOT_BUILT', 'ABORTED']
    static String worse(String a, String b) {
        if (a == null) { return b }
        if (b == null) { return a }
        return ORDER.indexOf(a) >= ORDER.indexOf(b) ? a : b
    }
}

/** The sandbox-whitelisted view of a build (workflow-support RunWrapper). */
class RunWrapper implements Serializable {
    // RunWrapper's @Whitelisted methods (getRawBuild is not); the stand-in implements those the files use
    static final Set<String> WHITELISTED = (['setResult', 'setDescription', 'setDisplayName', 'setKeepLog', 'getNumber',
        'getBuildCauses', 'getResult', 'getCurrentResult', 'resultIsBetterOrEqualTo', 'resultIsWorseOrEqualTo',
        'getTimeInMillis', 'getStartTimeInMillis', 'getDuration', 'getDurationString', 'getDescription',
        'getDisplayName', 'getFullDisplayName', 'isKeepLog', 'getProjectName', 'getFullProjectName', 'getPreviousBuild',
        'getNextBuild', 'getId', 'getBuildVariables', 'getUpstreamBuilds', 'getAbsoluteUrl', 'getChangeSets'] as Set).asImmutable()
    protected final Map run
    RunWrapper(Map run) { this.run = run }
    Map getBuildVariables() {
        if (run.kind == 'freestyle') {
            Map vars = [:]
            vars.putAll(run.environment ?: [:])
            vars.putAll(run.parameters ?: [:])
            return Collections.unmodifiableMap(vars)
        }
        return Collections.unmodifiableMap(run.envOverrides ?: [:])
    }
    List getUpstreamBuilds() {
        List result = []
        (run.upstreamBuilds ?: []).each { Map up ->
            RunWrapper wrapper = new RunWrapper(up)
            result << wrapper
            result.addAll(wrapper.upstreamBuilds)
        }
        return result
    }
    int getNumber() { return run.number as int }
    String getId() { return "${run.number}" }
    String getDisplayName() { return run.displayName ?: "#${run.number}" }
    String getFullProjectName() { return run.fullProjectName }
    String getProjectName() { return run.fullProjectName.tokenize('/').last() }
    String getFullDisplayName() { return "${run.fullProjectName.replace('/', ' » ')} ${displayName}" }
    String getDescription() { return run.description }
    String getResult() { return run.result }
    String getCurrentResult() { return run.result ?: 'SUCCESS' }
    long getStartTimeInMillis() { return (run.startTimeInMillis ?: 0) as long }
    String getAbsoluteUrl() { return "http://jenkins.invalid/job/${run.fullProjectName}/${run.number}/" }
    Object getRawBuild() {
        throw new RejectedAccessException('method org.jenkinsci.plugins.workflow.support.steps.build.RunWrapper getRawBuild')
    }
}

/** `currentBuild`: the RunWrapper of the running build, whose displayName/description/result are writable. */
class CurrentBuild extends RunWrapper {
    final Build b
    CurrentBuild(Build b) { super(b.runMap()); this.b = b }
    @Override Map getBuildVariables() { return Collections.unmodifiableMap(new LinkedHashMap(b.overrides)) }
    @Override List getUpstreamBuilds() { return new RunWrapper(b.runMap()).upstreamBuilds }
    @Override String getDisplayName() { return b.displayName ?: "#${b.number}" }
    void setDisplayName(String name) { b.displayName = name }
    @Override String getDescription() { return b.description }
    void setDescription(String text) { b.description = text }
    @Override String getResult() { return b.result }
    @Override String getCurrentResult() { return b.result ?: 'SUCCESS' }
    void setResult(String result) { b.setResult(result) }
}

class EnvProxy implements Serializable {
    final Build b
    EnvProxy(Build b) { this.b = b }
    Object getProperty(String name) { return b.environment().get(name) }
    // workflow-cps EnvActionImpl.setProperty: env.put(name, String.valueOf(value)), so `env.X = null` is "null"
    void setProperty(String name, Object value) { b.overrides[name] = String.valueOf(value) }
    // (no getAt/putAt: EnvActionImpl has none, `env['X']` is the GDK getAt(Object, String), refused by the sandbox)
}

class StageModel {
    String name
    Closure steps
    List<StageModel> children
    List options = []
    Map post = [:]
}

class OptionsDelegate {
    final Build b
    final List options
    final boolean stageLevel
    OptionsDelegate(Build b, List options, boolean stageLevel) { this.b = b; this.options = options; this.stageLevel = stageLevel }
    void timeout(Map args) { b.requirePlugin('workflow-basic-steps', 'timeout'); options << [type: 'timeout', args: args] }
    void timestamps() { b.requirePluginAtCompile('timestamper', 'timestamps'); options << [type: 'timestamps'] }
    void withFolderProperties() {
        b.requirePluginAtCompile('folder-properties', 'withFolderProperties')
        options << [type: 'withFolderProperties']
    }
    void disableConcurrentBuilds(Map args = [:]) { options << [type: 'disableConcurrentBuilds'] ; b.jobPropertyOptions << 'disableConcurrentBuilds' }
    void skipDefaultCheckout() { options << [type: 'skipDefaultCheckout'] }
    Object methodMissing(String name, Object args) {
        throw new CompileError("WorkflowScript: Invalid option type \"${name}\"")
    }
}

class AgentDelegate {
    Map agent = [:]
    void label(Object expression) { agent.label = expression?.toString() }
    Object getAny() { agent.any = true; return null }
    Object getNone() { agent.none = true; return null }
}

class StagesDelegate {
    final Build b
    final List<StageModel> stages
    StagesDelegate(Build b, List<StageModel> stages) { this.b = b; this.stages = stages }
    void stage(String name, Closure body) {
        StageModel model = new StageModel(name: name)
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = new StageDelegate(b, model)
        body.call()
        stages << model
    }
}

class StageDelegate {
    final Build b
    final StageModel model
    StageDelegate(Build b, StageModel model) { this.b = b; this.model = model }
    void steps(Closure body) { model.steps = body }
    void options(Closure body) { b.collectOptions(body, model.options, true) }
    void stages(Closure body) {
        model.children = []
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = new StagesDelegate(b, model.children)
        body.call()
    }
    void post(Closure body) { b.collectPost(body, model.post) }
}

class PostDelegate {
    static final List CONDITIONS = ['always', 'changed', 'fixed', 'regression', 'aborted', 'failure', 'success',
                                   'unstable', 'unsuccessful', 'cleanup']
    final Map post
    PostDelegate(Map post) { this.post = post }
    Object methodMissing(String name, Object args) {
        if (!(name in CONDITIONS)) {
            throw new CompileError("WorkflowScript: Invalid condition \"${name}\" - valid conditions are ${CONDITIONS}")
        }
        post[name] = ((Object[]) args)[0]
        return null
    }
}

class PipelineDelegate {
    final Build b
    PipelineDelegate(Build b) { this.b = b }
    Object getAny() { return [any: true] }
    Object getNone() { return [none: true] }
    void agent(Map spec) { b.agentClosure = { -> spec } }
    void agent(Closure body) {
        AgentDelegate d = new AgentDelegate()
        b.agentClosure = { ->
            body.resolveStrategy = Closure.DELEGATE_FIRST
            body.delegate = d
            body.call()
            return d.agent
        }
    }
    void options(Closure body) { b.collectOptions(body, b.pipelineOptions, false) }
    void environment(Closure body) { b.environmentClosure = body }
    void parameters(Closure body) { b.jobPropertyOptions << 'parameters' }
    void triggers(Closure body) { b.jobPropertyOptions << 'triggers' }
    void stages(Closure body) {
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = new StagesDelegate(b, b.stages)
        body.call()
    }
    void post(Closure body) { b.collectPost(body, b.post) }
}

/** `environment {}`: each assignment is evaluated in order and visible to the next one. */
class EnvironmentDelegate {
    final Build b
    final Map bound
    EnvironmentDelegate(Build b, Map bound) { this.b = b; this.bound = bound }
    void setProperty(String name, Object value) { bound[name] = value == null ? null : value.toString() }
    Object getProperty(String name) {
        if (name == 'env') { return b.envProxy }
        if (name == 'params') { return b.paramsProxy }
        if (name == 'currentBuild') { return b.currentBuild }
        if (bound.containsKey(name)) { return bound[name] }
        throw new MissingPropertyException(name, EnvironmentDelegate)
    }
    String credentials(String id) {
        Map cred = b.credential(id, null)
        if (cred.type == 'file') { return b.materializeSecretFile(id, cred) }
        if (cred.type == 'string') { return cred.secret }
        throw new AbortException("credentials('${id}') of type ${cred.type} is not supported here")
    }
}

/** One build: its model, its state while it runs, and what it leaves (log, results, archive). */
class Build {
    static final List JENKINS_VARS = ['BUILD_NUMBER', 'BUILD_ID', 'BUILD_DISPLAY_NAME', 'JOB_NAME', 'JOB_BASE_NAME',
                                      'BUILD_TAG', 'WORKSPACE', 'NODE_NAME', 'JENKINS_URL', 'BUILD_URL', 'JOB_URL']
    Map scenario
    Harness harness
    File workspace
    File buildDir
    String job
    int number
    Map params = [:]
    Map overrides = [:]
    List envStack = []
    int folderPropertiesDepth = 0
    String result
    String displayName
    String description
    List<String> log = []
    List stagesRun = []
    List stageStack = []
    List junit = []
    List archived = []
    List html = []
    List triggered = []
    List groovyErrors = []
    List postRan = []
    List orphans = []
    List milestones = []
    List checks = []
    String hang
    int nodeDepth = 0  // inside an agent or a `node` step: a workspace is there
    String nodeName
    List jobPropertyOptions = []
    List pipelineOptions = []
    List<Map> cpsFrames = []  // the CPS program's frames: [name, closure, nonCps, scopes: [[local: value]]]
    List<StageModel> stages = []
    Map post = [:]
    Closure agentClosure
    Closure environmentClosure
    long startMillis
    Long interruptAt
    String interruptResult
    String interruptMessage
    List deadlines = []
    boolean skipRest = false
    String cwd = ''
    EnvProxy envProxy
    Map paramsProxy  // `params`: an unmodifiable Map (workflow-cps ParamsVariable)
    CurrentBuild currentBuild
    Script script

    Map runMap() {
        return [kind: 'pipeline', fullProjectName: job, number: number, upstreamBuilds: scenario.upstreamBuilds ?: [],
                envOverrides: overrides, startTimeInMillis: startMillis]
    }

    void setResult(String r) { result = Results.worse(result, r) }

    void println(Object line) { log << line.toString() }

    void requirePlugin(String plugin, String what) {
        List plugins = scenario.plugins
        if (plugins != null && !(plugin in plugins)) {
            throw new MissingMethodException(what, Script, [] as Object[])
        }
    }

    void requirePluginAtCompile(String plugin, String what) {
        List plugins = scenario.plugins
        if (plugins != null && !(plugin in plugins)) {
            throw new CompileError("WorkflowScript: Invalid option type \"${what}\" (plugin ${plugin} is not installed)")
        }
    }

    void requireStep(String plugin, String step) {
        List plugins = scenario.plugins
        if (plugins != null && !(plugin in plugins)) {
            throw new MissingMethodException(step, Script, [] as Object[])
        }
    }

    void collectOptions(Closure body, List into, boolean stageLevel) {
        body.resolveStrategy = Closure.DELEGATE_ONLY
        body.delegate = new OptionsDelegate(this, into, stageLevel)
        body.call()
    }

    void collectPost(Closure body, Map into) {
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = new PostDelegate(into)
        body.call()
    }

    Map folderProperties() { return folderPropertiesDepth > 0 ? (scenario.folderProperties ?: [:]) : [:] }

    /** The environment a step sees, weakest first. */
    Map environment() {
        Map env = new LinkedHashMap(scenario.agentEnv ?: [:])
        env.putAll(scenario.nodeProperties ?: [:])
        env.BUILD_NUMBER = "${number}"
        env.BUILD_ID = "${number}"
        env.BUILD_DISPLAY_NAME = displayName ?: "#${number}"
        env.JOB_NAME = job
        env.JOB_BASE_NAME = job.tokenize('/').last()
        env.BUILD_TAG = "jenkins-${job.replace('/', '-')}-${number}"
        env.WORKSPACE = workspace.path
        env.NODE_NAME = nodeName ?: 'built-in'
        env.JENKINS_URL = 'http://jenkins.invalid/'
        env.JOB_URL = "http://jenkins.invalid/job/${job}/"
        env.BUILD_URL = "http://jenkins.invalid/job/${job}/${number}/"
        params.each { k, v -> env[k] = v == null ? '' : v.toString() }
        env.putAll(folderProperties())
        overrides.each { k, v -> if (v != null) { env[k] = v } }
        envStack.each { Map layer -> env.putAll(layer) }
        return env
    }

    Object withEnvLayer(Map layer, Closure body) {
        envStack << layer
        try {
            return body.call()
        } finally {
            envStack.remove(envStack.size() - 1)
        }
    }

    Map credential(String id, String expectedType) {
        Map cred = (scenario.credentials ?: [:])[id]
        if (cred == null) {
            throw new AbortException("Could not find credentials entry with ID '${id}'")
        }
        if (expectedType != null && cred.type != expectedType) {
            throw new AbortException("Credentials '${id}' is of type '${cred.type}' where '${expectedType}' was expected")
        }
        return cred
    }

    String materializeSecretFile(String id, Map cred) {
        File dir = new File(workspace.path + '@tmp', "secretFiles/${UUID.randomUUID()}")
        dir.mkdirs()
        File file = new File(dir, cred.fileName ?: 'secret')
        file.bytes = new File(cred.path).bytes
        return file.path
    }

    void checkInterrupt() {
        Map d = currentDeadline()
        if (d != null) {
            throw new FlowInterruptedException(d.result, d.message)
        }
    }

    /** The deadline (abort or timeout) that has passed, if any; it is consumed when returned. */
    Map currentDeadline() {
        long now = System.currentTimeMillis()
        String trigger = scenario.abort?.whenFileExists
        if (trigger && interruptResult && new File(trigger).exists()) {
            new File(trigger).delete()
            return [result: interruptResult, message: interruptMessage]
        }
        // A second click on abort (or `post`'s own timeout): the step running then, in `post` too, is
        // interrupted the same way (CpsFlowExecution.interrupt -> DurableTaskStep stop: SIGTERM to the
        // processes carrying the build's cookie, which is every process of the build's workspace)
        String second = scenario.abort?.secondWhenFileExists
        if (second && new File(second).exists()) {
            new File(second).delete()
            return [result: 'ABORTED', message: 'Aborted by user (second abort)']
        }
        if (interruptAt != null && now >= interruptAt) {
            interruptAt = null
            return [result: interruptResult, message: interruptMessage]
        }
        for (Map d : deadlines) {
            if (!d.fired && now >= d.at) {
                d.fired = true
                d.forcibleAt = now + ((scenario.timeoutGraceSeconds ?: 60) as long) * 1000L
                return [result: 'ABORTED', message: "Timeout has been exceeded (${d.label})"]
            }
            if (d.fired && d.forcibleAt != null && now >= d.forcibleAt) {
                d.forcibleAt = null
                return [result: 'ABORTED', message: 'Body did not finish within grace period; terminating with extreme prejudice']
            }
        }
        return null
    }

    Map currentStage() { return stageStack ? stageStack.last() : null }

    /** Steps that work on files need a workspace: an agent, or inside `node`. */
    void requireWorkspace(String step) {
        if (nodeDepth == 0) { throw new MissingContextVariableException(step) }
    }

    void stageResult(String r) {
        Map s = currentStage()
        if (s != null) { s.status = Results.worse(s.status, r) }
    }

    File resolve(String path) {
        File base = cwd ? new File(workspace, cwd) : workspace
        File f = new File(path)
        return f.absolute ? f : new File(base, path)
    }
}

/** The steps and the `pipeline` entry point, as seen by the Jenkinsfile (its script base class). */
abstract class PipelineScript extends Script {
    Build getB() { return (Build) binding.getVariable('__build') }

    /** Called by every step: none may run inside @NonCPS code; an asynchronous one saves the program. */
    void cpsStep(String step, boolean savesProgram) {
        List<Map> cpsFrames = b.cpsFrames
        Map nonCpsFrame = cpsFrames.reverse().find { Map f -> f.nonCps }
        if (nonCpsFrame != null) {
            throw new IllegalStateException(CpsRules.mismatch(nonCpsFrame.name as String, step))
        }
        if (savesProgram) {
            cpsFrames.each { Map frame ->
                frame.scopes.each { Map scope ->
                    scope.each { name, value ->
                        String bad = CpsRules.notSerializable(value)
                        if (bad != null) {
                            throw new NotSerializableException("${bad} (local variable '${name}' of ${frame.name}, " +
                                "held across step ${step}: CpsThreadGroup.saveProgram serializes every local in scope)")
                        }
                    }
                }
            }
        }
    }

    void pipeline(Closure body) {
        body.resolveStrategy = Closure.DELEGATE_FIRST
        body.delegate = new PipelineDelegate(b)
        body.call()
        b.harness.executeDeclarative(b)
    }

    // --- basic steps -------------------------------------------------------------------------
    void echo(Object message) { cpsStep('echo', false); b.checkInterrupt(); b.println(message) }

    void error(String message) { cpsStep('error', false); b.checkInterrupt(); throw new AbortException(message) }

    void unstable(String message) {
        cpsStep('unstable', false)
        b.println("WARNING: ${message}")
        b.setResult('UNSTABLE')
        b.stageResult('UNSTABLE')
    }

    Object script(Closure body) { return body.call() }

    boolean isUnix() { return true }

    boolean fileExists(String path) { cpsStep('fileExists', true); b.checkInterrupt(); b.requireWorkspace('fileExists'); return b.resolve(path).exists() }

    String readFile(Object arg) {
        cpsStep('readFile', true)
        b.checkInterrupt()
        b.requireWorkspace('readFile')
        String path = arg instanceof Map ? arg.file : arg.toString()
        File f = b.resolve(path)
        if (!f.exists()) { throw new java.nio.file.NoSuchFileException(f.path) }
        return f.getText('UTF-8')
    }

    void writeFile(Map args) {
        cpsStep('writeFile', true)
        b.checkInterrupt()
        b.requireWorkspace('writeFile')
        File f = b.resolve(args.file.toString())
        f.parentFile.mkdirs()
        f.setText(args.text.toString(), 'UTF-8')
    }

    void deleteDir() { (b.cwd ? b.resolve('.') : b.workspace).deleteDir() }

    Object dir(String path, Closure body) {
        cpsStep('dir', false)
        String old = b.cwd
        b.cwd = old ? "${old}/${path}" : path
        b.resolve('.').mkdirs()
        try { return body.call() } finally { b.cwd = old }
    }

    // sleep(long) too: Groovy would otherwise pick DefaultGroovyMethods.sleep(Object, long) for `sleep 5`
    void sleep(long time) { sleep((Object) time) }

    void sleep(Object time) {
        cpsStep('sleep', true)
        long seconds = time instanceof Map ? (time.time as long) : (time as long)
        long end = System.currentTimeMillis() + seconds * 1000
        while (System.currentTimeMillis() < end) { b.checkInterrupt(); Thread.sleep(50) }
    }

    Object withEnv(List vars, Closure body) {
        cpsStep('withEnv', false)
        Map layer = [:]
        vars.each { String kv -> int eq = kv.indexOf('='); layer[kv.substring(0, eq)] = kv.substring(eq + 1) }
        return b.withEnvLayer(layer, body)
    }

    Object timestamps(Closure body) { cpsStep('timestamps', false); b.requireStep('timestamper', 'timestamps'); return body.call() }

    Object withFolderProperties(Closure body) {
        cpsStep('withFolderProperties', false)
        b.requireStep('folder-properties', 'withFolderProperties')
        b.folderPropertiesDepth++
        try { return body.call() } finally { b.folderPropertiesDepth-- }
    }

    Object timeout(Map args, Closure body) {
        cpsStep('timeout', false)
        b.requireStep('workflow-basic-steps', 'timeout')
        return b.harness.withTimeout(b, args, body)
    }

    Object catchError(Map args = [:], Closure body) {
        cpsStep('catchError', false)
        String buildResult = args.containsKey('buildResult') ? args.buildResult : 'FAILURE'
        String stageResult = args.containsKey('stageResult') ? args.stageResult : 'SUCCESS'
        boolean catchInterruptions = args.containsKey('catchInterruptions') ? args.catchInterruptions : true
        try {
            return body.call()
        } catch (FlowInterruptedException e) {
            if (!catchInterruptions) { throw e }
            b.println("Caught: ${e.message}")
            if (buildResult) { b.setResult(buildResult) }
            if (stageResult) { b.stageResult(stageResult) }
        } catch (HangException h) {
            throw h
        } catch (Throwable e) {  // catchError catches any error, a Groovy one too (still reported to the test)
            if (Harness.isGroovyError(e)) { b.groovyErrors << "${e.getClass().name}: ${e.message}" }
            b.println("ERROR: ${e.message}")
            if (args.message) { b.println(args.message) }
            if (buildResult) { b.setResult(buildResult) }
            if (stageResult) { b.stageResult(stageResult) }
        }
        return null
    }

    Object milestone(Object args = null) {
        cpsStep('milestone', false)
        b.requireStep('pipeline-milestone-step', 'milestone')
        b.milestones << (args instanceof Map ? args : [ordinal: args])
        return null
    }

    // --- sh ------------------------------------------------------------------------------------
    Object sh(String script) { return sh([script: script]) }

    Object sh(Map args) {
        cpsStep('sh', true)
        b.checkInterrupt()
        b.requireWorkspace('sh')
        return b.harness.runShell(b, args)
    }

    // --- credentials ---------------------------------------------------------------------------
    Map file(Map args) { return [binding: 'file', *: args] }
    Map aws(Map args) { return [binding: 'aws', *: args] }
    Map usernamePassword(Map args) { return [binding: 'usernamePassword', *: args] }
    Map string(Map args) {
        if (args.containsKey('credentialsId')) { return [binding: 'string', *: args] }
        return [parameter: 'string', name: args.name, value: args.value == null ? null : args.value.toString()]
    }
    Map booleanParam(Map args) { return [parameter: 'boolean', name: args.name, value: "${args.value}"] }

    Object withCredentials(List bindings, Closure body) {
        cpsStep('withCredentials', false)
        b.requireStep('credentials-binding', 'withCredentials')
        b.requireWorkspace('withCredentials')  // a secret file is written into the workspace's @tmp
        Map layer = [:]
        List temporary = []
        bindings.each { Map binding ->
            if (binding.binding == 'aws') { b.requireStep('aws-credentials', 'aws') }
            String expected = [file: 'file', string: 'string', aws: 'aws', usernamePassword: 'usernamePassword'][binding.binding]
            Map cred = b.credential(binding.credentialsId?.toString(), expected)
            switch (binding.binding) {
                case 'file':
                    String path = b.materializeSecretFile(binding.credentialsId, cred)
                    temporary << new File(path)
                    layer[binding.variable] = path
                    break
                case 'string':
                    layer[binding.variable] = cred.secret
                    break
                case 'aws':
                    layer[binding.accessKeyVariable ?: 'AWS_ACCESS_KEY_ID'] = cred.accessKey
                    layer[binding.secretKeyVariable ?: 'AWS_SECRET_ACCESS_KEY'] = cred.secretKey
                    break
                default:
                    layer[binding.usernameVariable] = cred.username
                    layer[binding.passwordVariable] = cred.password
            }
        }
        try {
            return b.withEnvLayer(layer, body)
        } finally {
            temporary.each { File f -> f.delete(); f.parentFile.delete() }
        }
    }

    // --- publishing ----------------------------------------------------------------------------
    Object junit(Object args) {
        cpsStep('junit', true)
        b.requireStep('junit', 'junit')
        b.checkInterrupt()
        b.requireWorkspace('junit')
        Map a = args instanceof Map ? args : [testResults: args.toString()]
        return b.harness.junit(b, a)
    }

    void archiveArtifacts(Object args) {
        cpsStep('archiveArtifacts', true)
        b.checkInterrupt()
        b.requireWorkspace('archiveArtifacts')
        Map a = args instanceof Map ? args : [artifacts: args.toString()]
        b.harness.archive(b, a)
    }

    void publishHTML(Map args) {
        cpsStep('publishHTML', true)
        b.requireStep('htmlpublisher', 'publishHTML')
        b.requireWorkspace('publishHTML')
        Map t = args.target ?: args
        File dir = b.resolve(t.reportDir.toString())
        if (!dir.isDirectory()) {
            if (!t.allowMissing) { throw new AbortException("Specified HTML directory '${dir}' does not exist.") }
            b.println("Specified HTML directory '${dir}' does not exist.")
            return
        }
        List files = t.reportFiles.toString().split(',').collect { it.trim() }.findAll { new File(dir, it).exists() }
        b.html << [name: t.reportName, files: files]
    }

    // --- scm -----------------------------------------------------------------------------------
    /** `scm` (workflow-cps SCMVar): the SCM the Jenkinsfile came from; only `checkout` takes it here. */
    Object getScm() { return [scm: 'job'] }

    Object checkout(Object scmValue) {
        cpsStep('checkout', true)
        b.checkInterrupt()
        b.requireWorkspace('checkout')
        b.harness.checkoutScm(b, 'checkout')
        return [:]
    }

    // --- nodes ---------------------------------------------------------------------------------
    Object node(String label, Closure body) { cpsStep('node', true); b.checkInterrupt(); return b.harness.onNode(b, label, body) }

    Object node(Closure body) { return node((String) null, body) }

    // --- other builds --------------------------------------------------------------------------
    Object build(Map args) {
        cpsStep('build', true)
        b.requireStep('pipeline-build-step', 'build')
        b.checkInterrupt()
        return b.harness.triggerDownstream(b, args)
    }

    Object parallel(Map branches) {
        cpsStep('parallel', true)
        b.checkInterrupt()
        Map copy = new LinkedHashMap(branches)
        copy.remove('failFast')
        Throwable first = null
        copy.each { name, Closure body ->
            try {
                body.call()
            } catch (HangException h) {
                throw h
            } catch (Throwable t) {
                b.println("Failed in branch ${name}")
                if (first == null) { first = t }
            }
        }
        if (first != null) { throw first }
        return null
    }

    Object methodMissing(String name, Object args) {
        throw new MissingMethodException(name, PipelineScript, (Object[]) args)
    }

    /** What SandboxTransformer puts where CPS would not translate a comparator closure. */
    Object __cpsMismatch(String method) {
        throw new IllegalStateException("expected to call java.util.Collection.${method} but wound up catching " +
            'org.jenkinsci.plugins.workflow.cps.CpsClosure2.call; see: ' +
            'https://jenkins.io/redirect/pipeline-cps-method-mismatches/ (a comparator closure is not CPS-translated)')
    }

    /** What SandboxTransformer puts where the sandbox refuses a call: it fails when reached. */
    Object __sandboxRejected(String signature) {
        throw new RejectedAccessException(signature)
    }
}

class Harness {
    CompilerConfiguration config
    GroovyClassLoader parentLoader

    Harness(ClassLoader loader) {
        config = new CompilerConfiguration()
        config.scriptBaseClass = 'PipelineScript'
        config.addCompilationCustomizers(new SandboxCustomizer())
        parentLoader = new GroovyClassLoader(loader)
    }

    static boolean isGroovyError(Throwable t) {
        return !(t instanceof AbortException || t instanceof FlowInterruptedException)
    }

    /** Runs one build (recursively for downstream builds) and returns what a user sees of it. */
    Map run(Map scenario) {
        Build b = new Build(scenario: scenario, harness: this)
        b.workspace = new File(scenario.workspace as String)
        b.workspace.mkdirs()
        b.buildDir = new File(scenario.buildDir ?: (scenario.workspace + '@builds'))
        b.buildDir.mkdirs()
        b.job = scenario.job ?: 'job'
        b.number = (scenario.number ?: 1) as int
        b.startMillis = System.currentTimeMillis()
        b.params = effectiveParams(scenario)
        if (scenario.restart) {  // a restarted build: the original's parameters, env.X assignments, artifacts
            b.overrides.putAll(scenario.restart.envOverrides ?: [:])
            if (scenario.restart.archiveFrom) {
                File from = new File(scenario.restart.archiveFrom as String)
                (scenario.restart.archived ?: []).each { String rel ->
                    File target = new File(b.buildDir, "archive/${rel}")
                    target.parentFile.mkdirs()
                    target.bytes = new File(from, rel).bytes
                    b.archived << rel
                }
            }
        }
        b.envProxy = new EnvProxy(b)
        b.paramsProxy = Collections.unmodifiableMap(b.params)
        b.currentBuild = new CurrentBuild(b)
        if (scenario.abort) {
            b.interruptResult = 'ABORTED'
            b.interruptMessage = 'Aborted by user'
        }
        Binding binding = new Binding()
        binding.setVariable('__build', b)
        binding.setVariable('env', b.envProxy)
        binding.setVariable('params', b.paramsProxy)
        binding.setVariable('currentBuild', b.currentBuild)
        Build outer = CpsRuntime.current
        CpsRuntime.current = b
        try {
            GroovyShell shell = new GroovyShell(parentLoader, binding, config)
            b.script = shell.parse(new File(scenario.jenkinsfile as String))
            b.script.run()
        } catch (CompileError e) {
            b.println("org.codehaus.groovy.control.MultipleCompilationErrorsException: startup failed:\n${e.message}")
            b.setResult('FAILURE')
        } catch (HangException h) {
            b.println(h.message)
            b.hang = h.message
        } catch (Throwable t) {
            recordFailure(b, t)
        } finally {
            CpsRuntime.current = outer
        }
        waitForOrphans(b)
        return [
            result: b.hang != null ? 'HANG' : (b.result ?: 'SUCCESS'), hang: b.hang, checks: b.checks, displayName: b.displayName ?: "#${b.number}", description: b.description,
            stages: b.stagesRun, log: b.log, junit: b.junit, archived: b.archived, html: b.html,
            triggered: b.triggered, groovyErrors: b.groovyErrors, postRan: b.postRan, orphans: b.orphans,
            buildVariables: b.overrides, params: b.params, milestones: b.milestones,
            jobPropertyOptions: b.jobPropertyOptions,
            pipelineOptions: b.pipelineOptions.collect { it.type },
        ]
    }

    /** Parameters as Jenkins gives them: definitions' defaults, overridden by the given values
     * (undefined ones dropped with a warning, as core's ParametersAction does). */
    static Map effectiveParams(Map scenario) {
        Map values = [:]
        Map definitions = scenario.parameterDefinitions ?: [:]
        definitions.each { name, defaultValue -> values[name] = defaultValue }
        (scenario.parameters ?: [:]).each { name, value ->
            if (definitions && !definitions.containsKey(name)) {
                return
            }
            // The form (Build with Parameters) trims a StringParameterDefinition with trim (ours all have
            // it); the `build` step passes its values as given (pipeline-build-step), untrimmed.
            values[name] = value instanceof String && !scenario.untrimmedParameters ? value.trim() : value
        }
        return values
    }

    void recordFailure(Build b, Throwable t) {
        if (t instanceof FlowInterruptedException) {
            b.println("Rejected/aborted: ${t.message}")
            b.setResult(((FlowInterruptedException) t).result)
            return
        }
        if (t instanceof AbortException) {
            b.println("ERROR: ${t.message}")
        } else {
            StringWriter sw = new StringWriter()
            t.printStackTrace(new PrintWriter(sw))
            b.println(sw.toString())
            b.groovyErrors << "${t.getClass().name}: ${t.message}"
        }
        b.setResult('FAILURE')
    }

    // --- declarative execution -------------------------------------------------------------------
    void executeDeclarative(Build b) {
        Map agent = b.agentClosure ? (Map) b.agentClosure.call() : [any: true]
        if (agent.none) {
            runDeclarative(b)
            return
        }
        onNode(b, agent.label as String) { ->
            if (!b.pipelineOptions.any { Map o -> o.type == 'skipDefaultCheckout' }) {
                checkoutScm(b, 'Declarative: Checkout SCM')
            }
            runDeclarative(b)
        }
    }

    /** `checkout scm`: the job's repository (scenario `scm`: a directory standing for its checkout) is
     * checked out into the workspace: its files are written over what is there, other files are left
     * (git plugin: a checkout of a tracked tree, untracked files kept). Declarative's `agent` does it
     * before the stages unless `skipDefaultCheckout` (pipeline-model-definition ModelInterpreter,
     * inside the agent); `node` does not. Without a scenario `scm` nothing is checked out. */
    void checkoutScm(Build b, String why) {
        String from = b.scenario.scm
        if (!from) { return }
        b.println("[Pipeline] ${why}: checkout scm into ${b.workspace}")
        File root = new File(from)
        Files.walk(root.toPath()).each { java.nio.file.Path path ->
            if (Files.isRegularFile(path)) {
                File target = new File(b.resolve('.'), root.toPath().relativize(path).toString())
                target.parentFile.mkdirs()
                target.bytes = path.toFile().bytes
            }
        }
    }

    // --- nodes and executors (core Queue, LoadBalancer; workflow-durable-task-step ExecutorStepExecution) ----
    /** The Jenkins' nodes: scenario.nodes, else one agent `agent-1` with scenario.agentLabels (default
     * `bakery`) and 2 executors, plus the built-in node (labels `built-in` and, as older Jenkins name it,
     * `master`; 2 executors, core's default). A node also carries its own name as a label. */
    static List nodesOf(Map scenario) {
        if (scenario.nodes != null) { return scenario.nodes as List }
        return [[name: 'agent-1', labels: scenario.agentLabels ?: ['bakery'], executors: 2],
                [name: 'built-in', labels: ['built-in', 'master'], executors: 2]]
    }

    Map busy = [:]  // node name -> executors taken, over the whole build tree (one Jenkins)

    /** `agent { label }` / `node(label)`: takes one executor of a node with the label for the body, as the
     * queue would. The harness runs one thing at a time, so an executor that is taken now is held by a
     * build that is waiting (for this one, through `build`): waiting for it would be for ever. */
    Object onNode(Build b, String label, Closure body) {
        List nodes = nodesOf(b.scenario).findAll { Map n -> label == null || label in ((n.labels ?: []) + [n.name]) }
        if (!nodes) {
            throw new HangException("Still waiting to schedule task\nThere are no nodes with the label \u2018${label}\u2019")
        }
        Map node = nodes.find { Map n -> ((busy[n.name] ?: 0) as int) < ((n.executors ?: 1) as int) }
        if (node == null) {
            throw new HangException("Still waiting to schedule task\nWaiting for next available executor on " +
                                    "\u2018${label}\u2019 (each is held by a build that waits for this one)")
        }
        busy[node.name] = ((busy[node.name] ?: 0) as int) + 1
        String before = b.nodeName
        b.nodeName = node.name
        b.nodeDepth++
        b.println("Running on ${node.name} in ${b.workspace}")
        try {
            return body.call()
        } finally {
            b.nodeDepth--
            b.nodeName = before
            busy[node.name] = ((busy[node.name] as int) - 1)
        }
    }

    void runDeclarative(Build b) {
        if (b.scenario.abort?.stage == null && b.scenario.abort?.afterSeconds != null) {  // from the start
            b.interruptAt = System.currentTimeMillis() + (long) (b.scenario.abort.afterSeconds * 1000)
        }
        Map layer = [:]
        b.envStack << layer
        try {
            if (b.environmentClosure) {
                Closure env = b.environmentClosure.rehydrate(new EnvironmentDelegate(b, layer), b.script, b.script)
                env.resolveStrategy = Closure.DELEGATE_FIRST
                env.call()
            }
            withOptions(b, b.pipelineOptions, 'pipeline') {
                runStages(b, b.stages)
                runPost(b, b.post, 'pipeline')
            }
        } finally {
            b.envStack.remove(layer)
        }
    }

    Object withOptions(Build b, List options, String label, Closure body) {
        Closure wrapped = body
        options.reverse().each { Map option ->
            Closure inner = wrapped
            if (option.type == 'timeout') {
                wrapped = { -> withTimeout(b, option.args, inner, label) }
            } else if (option.type == 'withFolderProperties') {
                wrapped = { -> b.folderPropertiesDepth++; try { inner.call() } finally { b.folderPropertiesDepth-- } }
            }
        }
        return wrapped.call()
    }

    Object withTimeout(Build b, Map args, Closure body, String label = 'timeout step') {
        String unit = (args.unit ?: 'MINUTES').toString()
        long millis = TimeUnit.valueOf(unit).toMillis(args.time as long)
        double scale = ((b.scenario.timeScales ?: [:])[unit] ?: 1.0) as double
        Map deadline = [at: System.currentTimeMillis() + (long) (millis * scale), fired: false, label: label]
        b.deadlines << deadline
        try {
            return body.call()
        } finally {
            b.deadlines.remove(deadline)
        }
    }

    void runStages(Build b, List<StageModel> stages) {
        String restartAt = b.scenario.restart?.fromStage
        if (stages.is(b.stages) && restartAt) {
            int at = stages.findIndexOf { StageModel s -> s.name == restartAt }
            if (at < 0) {  // RestartDeclarativePipelineAction offers the top-level stages only
                throw new AbortException("Stage \"${restartAt}\" cannot be restarted: only top-level stages can")
            }
            stages.take(at).each { StageModel s ->
                b.println("Stage \"${s.name}\" skipped due to this build restarting at stage \"${restartAt}\"")
                markSkipped(b, s)
            }
            stages.drop(at).each { StageModel s -> runStage(b, s) }
            return
        }
        stages.each { StageModel s -> runStage(b, s) }
    }

    void markSkipped(Build b, StageModel s) {
        b.stagesRun << [name: s.name, status: 'SKIPPED']
        (s.children ?: []).each { StageModel c -> markSkipped(b, c) }
    }

    void runStage(Build b, StageModel s) {
        if (b.skipRest) {
            b.println("Stage \"${s.name}\" skipped due to earlier failure(s)")
            markSkipped(b, s)
            return
        }
        Map record = [name: s.name, status: 'SUCCESS']
        b.stagesRun << record
        b.stageStack << record
        b.println("[Pipeline] { (${s.name})")
        Map abort = b.scenario.abort
        if (abort?.stage == s.name) {
            b.interruptAt = System.currentTimeMillis() + (long) ((abort.afterSeconds ?: 0) * 1000)
        }
        try {
            withOptions(b, s.options, "stage ${s.name}") {
                if (s.children != null) {
                    int first = b.stagesRun.size()
                    runStages(b, s.children)
                    // a nested stage's failure is its parent's too (the error propagates through it)
                    b.stagesRun.drop(first).each { Map child ->
                        if (child.status != 'SKIPPED') { record.status = Results.worse(record.status, child.status) }
                    }
                } else if (s.steps != null) {
                    Closure steps = s.steps.rehydrate(b.script, b.script, b.script)
                    steps.call()
                }
            }
        } catch (FlowInterruptedException e) {
            b.println("${e.message}")
            record.status = Results.worse(record.status, e.result)
            b.setResult(e.result)
            b.skipRest = true
        } catch (HangException h) {
            throw h
        } catch (Throwable t) {
            recordFailure(b, t)
            record.status = 'FAILURE'
            b.skipRest = true
        } finally {
            b.stageStack.remove(record)
        }
        if (s.post) {
            runPost(b, s.post, "stage ${s.name}")
        }
        b.println('[Pipeline] }')
    }

    boolean conditionHolds(String condition, String result, String previous) {
        String r = result ?: 'SUCCESS'
        switch (condition) {
            case 'always': case 'cleanup': return true
            case 'changed': return previous != null && previous != r
            case 'fixed': return previous in ['FAILURE', 'UNSTABLE'] && r == 'SUCCESS'
            case 'regression': return previous == 'SUCCESS' && r in ['FAILURE', 'UNSTABLE', 'ABORTED']
            case 'aborted': return r == 'ABORTED'
            case 'failure': return r == 'FAILURE'
            case 'success': return r == 'SUCCESS'
            case 'unstable': return r == 'UNSTABLE'
            case 'unsuccessful': return r != 'SUCCESS'
        }
        return false
    }

    void runPost(Build b, Map post, String where) {
        PostDelegate.CONDITIONS.each { String condition ->
            Closure body = post[condition]
            if (body == null || !conditionHolds(condition, b.result, b.scenario.previousResult)) {
                return
            }
            b.postRan << "${where}:${condition}"
            b.println("[Pipeline] ${condition} (post of ${where})")
            try {
                body.rehydrate(b.script, b.script, b.script).call()
            } catch (HangException h) {
                throw h
            } catch (Throwable t) {
                recordFailure(b, t)
            }
        }
    }

    // --- sh --------------------------------------------------------------------------------------
    Object runShell(Build b, Map args) {
        String script = args.script.toString()
        File dir = b.resolve('.')
        dir.mkdirs()
        File tmp = new File(b.workspace.path + '@tmp')
        tmp.mkdirs()
        File scriptFile = File.createTempFile('script', '.sh', tmp)
        scriptFile.text = script
        List command = script.startsWith('#!') ? ['setsid', scriptFile.path] : ['setsid', 'sh', '-xe', scriptFile.path]
        scriptFile.setExecutable(true)
        // durable-task: with returnStdout only stdout is the step's value; stderr still goes to the build log
        ProcessBuilder pb = new ProcessBuilder(command).directory(dir).redirectErrorStream(!args.returnStdout)
        pb.environment().clear()
        b.environment().each { k, v -> if (v != null) { pb.environment().put(k.toString(), v.toString()) } }
        StringBuilder output = new StringBuilder()
        Map stream = [open: true]
        Process p = pb.start()
        long pid = p.pid()
        Thread reader = Thread.start {
            p.inputStream.withReader('UTF-8') { Reader r ->
                r.eachLine { String line ->
                    synchronized (output) { output.append(line).append('\n') }
                    if (!args.returnStdout && stream.open) { synchronized (b.log) { b.log << line } }
                }
            }
        }
        Thread errors = args.returnStdout ? Thread.start {
            p.errorStream.withReader('UTF-8') { Reader r ->
                r.eachLine { String line -> if (stream.open) { synchronized (b.log) { b.log << line } } }
            }
        } : null
        while (!p.waitFor(100, TimeUnit.MILLISECONDS)) {
            Map d = b.currentDeadline()
            if (d != null) {
                stopProcess(b, p, pid, stream, d)
            }
        }
        reader.join(5000)
        errors?.join(5000)
        scriptFile.delete()
        int code = p.exitValue()
        if (args.returnStatus) { return code }
        if (code != 0) { throw new AbortException("script returned exit code ${code}") }
        return args.returnStdout ? output.toString() : null
    }

    /** Whether any process of the group still runs (zombies do not count: PID 1 of a container may never
     * reap an orphan, and `kill -0` would see it for ever). */
    static boolean groupAlive(long pgid) {
        String table = ['ps', '-e', '-o', 'pgid=,stat='].execute().text
        return table.readLines().any { String line ->
            List cols = line.trim().split(/\s+/) as List
            cols.size() == 2 && cols[0] == "${pgid}".toString() && !cols[1].startsWith('Z')
        }
    }

    /** DurableTaskStep.Execution.stop: SIGTERM to the process tree, then give up after REMOTE_TIMEOUT. The
     * step is over only when every process of the tree has ended (the shell dying first is not enough). */
    void stopProcess(Build b, Process p, long pid, Map stream, Map cause) {
        b.println('Sending interrupt signal to process')
        ['kill', '-s', 'TERM', '--', "-${pid}".toString()].execute().waitFor()
        int grace = (b.scenario.stopGraceSeconds ?: 20) as int
        long end = System.currentTimeMillis() + grace * 1000L
        while (groupAlive(pid) && System.currentTimeMillis() < end) {
            Thread.sleep(100)
        }
        if (groupAlive(pid)) {
            b.println("After ${grace}s process did not stop")
            stream.open = false  // Jenkins stops following the output of a step it gave up
            b.orphans << [pid: pid, process: p]
        }
        throw new FlowInterruptedException(cause.result, cause.message)
    }

    void waitForOrphans(Build b) {
        b.orphans = b.orphans.collect { Map o ->
            boolean stillRunningAtEnd = groupAlive(o.pid as long)
            long end = System.currentTimeMillis() + 120000
            while (groupAlive(o.pid as long) && System.currentTimeMillis() < end) { Thread.sleep(100) }
            if (groupAlive(o.pid as long)) {
                ['kill', '-s', 'KILL', '--', "-${o.pid}".toString()].execute().waitFor()
            }
            return [pid: o.pid, runningWhenBuildEnded: stillRunningAtEnd]
        }
    }

    // --- publishers ------------------------------------------------------------------------------
    static List<File> matching(Build b, String patterns, String excludes = null) {
        List<PathMatcher> includes = patterns.split(',').collect { FileSystems.default.getPathMatcher("glob:${it.trim()}") }
        List<PathMatcher> exclude = (excludes ?: '').split(',').findAll { it.trim() }.collect {
            FileSystems.default.getPathMatcher("glob:${it.trim()}")
        }
        List<File> found = []
        File base = b.resolve('.')
        if (!base.exists()) { return found }
        Files.walk(base.toPath()).each { java.nio.file.Path path ->
            if (Files.isRegularFile(path)) {
                java.nio.file.Path rel = base.toPath().relativize(path)
                if (includes.any { it.matches(rel) } && !exclude.any { it.matches(rel) }) { found << path.toFile() }
            }
        }
        return found.sort { it.path }
    }

    Map junit(Build b, Map args) {
        List<File> files = matching(b, args.testResults.toString())
        if (!files) {
            if (args.allowEmptyResults) {
                b.println('None of the test reports contained any result')
                return [totalCount: 0, failCount: 0]
            }
            throw new AbortException('No test report files were found. Configuration error?')
        }
        // junit >= 1.64 (TestResult.parse): every matching file is parsed, old ones too, unless
        // skipOldReports (then files older than the build start, less FILE_TIME_PRECISION_MARGIN 3 s, are not)
        List<File> fresh = args.skipOldReports ? files.findAll { it.lastModified() >= b.startMillis - 3000 } : files
        if (!fresh) {
            if (args.allowEmptyResults) {
                b.println('None of the test reports contained any result')
                return [totalCount: 0, failCount: 0]
            }
            throw new AbortException('None of the test reports contained any result')
        }
        int total = 0
        int failed = 0
        List cases = []
        fresh.each { File f ->
            Node root = new XmlParser().parse(f)
            List suites = root.name() == 'testsuite' ? [root] : root.testsuite
            suites.each { Node suite ->
                suite.testcase.each { Node tc ->
                    total++
                    boolean bad = tc.failure || tc.error
                    if (bad) { failed++ }
                    cases << [suite: suite.@name, name: tc.@name, failed: bad,
                              message: bad ? ((tc.failure ?: tc.error)[0].@message) : null]
                }
            }
        }
        if (total == 0 && !args.allowEmptyResults) {
            throw new AbortException('None of the test reports contained any result')
        }
        b.junit << [files: fresh.collect { b.workspace.toPath().relativize(it.toPath()).toString() }, cases: cases,
                    total: total, failed: failed]
        if (failed > 0) {
            b.setResult('UNSTABLE')
            b.stageResult('UNSTABLE')
        }
        // JUnitResultArchiver: unless skipPublishingChecks, the result is published as a check named
        // checksName (default "Tests") through whatever checks-api publisher is installed (GitHub...)
        if (!args.skipPublishingChecks && b.scenario.checksPublisher) {
            b.checks << (args.checksName ?: 'Tests')
        }
        return [totalCount: total, failCount: failed]
    }

    void archive(Build b, Map args) {
        List<File> files = matching(b, args.artifacts.toString(), args.excludes)
        if (!files) {
            if (args.allowEmptyArchive) {
                b.println("No artifacts found that match the file pattern \"${args.artifacts}\"")
                return
            }
            throw new AbortException("No artifacts found that match the file pattern \"${args.artifacts}\". Configuration error?")
        }
        File into = new File(b.buildDir, 'archive')
        files.each { File f ->
            String rel = b.resolve('.').toPath().relativize(f.toPath()).toString()
            File target = new File(into, rel)
            target.parentFile.mkdirs()
            target.bytes = f.bytes
            b.archived << rel
        }
    }

    // --- build -----------------------------------------------------------------------------------
    Object triggerDownstream(Build b, Map args) {
        String job = args.job.toString()
        Map spec = (b.scenario.downstream ?: [:])[job]
        if (spec == null) {
            throw new AbortException("No item named ${job} found")
        }
        Map given = [:]
        (args.parameters ?: []).each { Map p -> given[p.name] = p.value }
        boolean wait = args.containsKey('wait') ? args.wait : true
        boolean propagate = args.containsKey('propagate') ? args.propagate : true
        Map definitions = spec.parameterDefinitions ?: [:]
        given.keySet().findAll { definitions && !definitions.containsKey(it) }.each {
            b.println("WARNING: parameter '${it}' is not defined by ${job}: it is dropped")
        }
        int number = b.triggered.count { it.job == job } + 1
        Map record = [job: job, parameters: given, wait: wait]
        b.triggered << record
        b.println("Scheduling project: ${job}")
        if (!wait) { return null }
        Map result
        if (spec.jenkinsfile) {
            Map child = new LinkedHashMap(spec)
            child.job = job
            child.number = number
            child.parameters = given
            child.workspace = "${spec.workspace}/${number}"
            child.buildDir = "${spec.workspace}/${number}@build"
            child.nodes = nodesOf(b.scenario)  // one Jenkins: the same nodes and executors
            child.checksPublisher = b.scenario.checksPublisher
            child.scm = spec.scm ?: b.scenario.scm  // generated jobs share the SCM (the user's repository)
            child.untrimmedParameters = true  // `build` hands its StringParameterValues over as they are
            result = run(child)
            if (result.result == 'HANG') {  // the downstream waits for ever, and this build with it
                throw new HangException("${job} #${number} never starts: ${result.hang}")
            }
        } else {
            result = [result: spec.result ?: 'SUCCESS', buildVariables: spec.buildVariables ?: [:]]
        }
        record.result = result
        RunWrapper wrapper = new RunWrapper([kind: 'pipeline', fullProjectName: job, number: number,
                                             envOverrides: result.buildVariables, result: result.result])
        if (propagate && result.result != 'SUCCESS') {
            throw new FlowInterruptedException(result.result,
                "${job} #${number} completed with status ${result.result} (propagate: false to ignore)")
        }
        return wrapper
    }
}

Harness harness = new Harness(this.class.classLoader)
Closure runOne = { String path ->
    Map scenario = (Map) new JsonSlurper().parse(new File(path))
    Map result
    try {
        result = harness.run(scenario)
    } catch (Throwable t) {
        StringWriter sw = new StringWriter()
        t.printStackTrace(new PrintWriter(sw))
        result = [result: 'HARNESS_ERROR', log: [sw.toString()], groovyErrors: ["${t.getClass().name}: ${t.message}"]]
    }
    new File(scenario.resultFile as String).setText(JsonOutput.toJson(result), 'UTF-8')
}

if (args && args[0] == '--serve') {
    BufferedReader input = new BufferedReader(new InputStreamReader(System.in, 'UTF-8'))
    String line
    while ((line = input.readLine()) != null) {
        if (line.trim()) {
            runOne(line.trim())
            System.out.println("DONE ${line.trim()}")
            System.out.flush()
        }
    }
} else {
    args.each { runOne(it) }
}
