#!/usr/bin/env python3
"""tools/layers.py [SRC] - the crate's layering, checked: every `crate::` import must point
to a module of the same or a lower layer (LAYERS below), and no set of modules may import
each other in a cycle. Prints the violations and a summary; exits 1 on any.

Our own check (CI runs it): a new upward import or a new cycle fails the build. Keep
LAYERS in step with src/lib.rs and docs/ARCHITECTURE.md."""
import os
import re
import sys

# Top-level module (or `module::child`) -> layer. The most specific name wins.
LAYERS = {
    # 0. shared values
    "clock": 0, "ids": 0, "path": 0,
    # 1. gateway.toml -> Config
    "config": 1,
    # 2. outbound HTTP and the body type; errors and their HTTP form; connection caps;
    #    metrics, OpenTelemetry traces and the text log's line, leaves every layer may
    #    count, trace or log in
    "net": 2, "error": 2, "capacity": 2,
    "ops::metrics": 2, "ops::exposition": 2, "ops::process": 2, "ops::otel": 2,
    "ops::textline": 2, "ops::logline": 2, "ops::logfields": 2, "ops::logtime": 2,
    "ops::logwriter": 2,
    # 3. policy tables and identity
    "policy": 3, "identity": 3, "pipeline::headers": 3,
    # 4. the live state
    "app": 4,
    # 5. the decision (steps 2-5)
    "pipeline": 5,
    # 6. front doors
    "http": 6,
    # 7. operating it, the command line, the crate root
    "ops": 7, "cli": 7, "lib": 8, "main": 8,
}

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return "::".join(rel)


def layer(module):
    parts = module.split("::")
    for n in range(len(parts), 0, -1):
        name = "::".join(parts[:n])
        if name in LAYERS:
            return name, LAYERS[name]
    return None, None


files = {}
for root, _, names in os.walk(SRC):
    for f in names:
        if f.endswith(".rs"):
            p = os.path.join(root, f)
            files[module_of(p)] = p


def resolve(path):
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        m = "::".join(parts[:n])
        if m in files:
            return m
    return None


def imports(text):
    # Inline test modules may reach anywhere; they are not part of the layering.
    text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    found = set()
    for group in re.findall(r"use\s+crate::\{([^;]*)\};", text, flags=re.S):
        for item in re.split(r",\s*(?![^{]*\})", group):
            found.add(item.strip().split("::{")[0].strip())
    found.update(re.findall(r"crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text))
    return found


edges = {m: set() for m in files}
problems = []
for m, p in sorted(files.items()):
    src_name, src_layer = layer(m)
    if src_layer is None:
        problems.append(f"{p}: module {m} has no layer in tools/layers.py")
        continue
    for target in imports(open(p, encoding="utf-8").read()):
        t = resolve(target)
        if not t or t == m or t.startswith(m + "::") or m.startswith(t + "::"):
            continue
        edges[m].add(t)
        t_name, t_layer = layer(t)
        if t_layer is not None and t_layer > src_layer:
            problems.append(
                f"{p}: {m} (layer {src_layer}) imports {t} (layer {t_layer}, {t_name}): upward"
            )

# Cycles: Tarjan's strongly connected components.
index, low, stack, on_stack, cycles = {}, {}, [], set(), []
counter = [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            cycles.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        visit(v)
for c in cycles:
    problems.append("import cycle: " + ", ".join(c))

largest = max(files.values(), key=lambda p: sum(1 for _ in open(p, encoding="utf-8")))
lines = sum(1 for _ in open(largest, encoding="utf-8"))
for p in problems:
    print(p)
print(f"layers: files={len(files)} cycles={len(cycles)} upward={len(problems) - len(cycles)} "
      f"largest={os.path.relpath(largest, SRC)}:{lines}")
sys.exit(1 if problems else 0)
