#!/usr/bin/env python3
"""Import cycles between the modules of a Rust crate: file level, and between the rooms
(submodule folders) of the modules named with --rooms. Exits 1 when it finds a cycle.

usage: scripts/module-cycles.py SRC_ROOT [CRATE_PREFIX] [--tests] [--rooms MOD ...]

SRC_ROOT is a crate's source folder (trainer/src, src); CRATE_PREFIX the module path of SRC_ROOT
("" for the crate root); --rooms takes module paths such as `backend` or `backend::cuda`. Edges
come from `use` trees and inline `crate::`/`super::`/`self::` paths, following `pub use`
re-exports to the module that defines the item; `#[cfg(test)]` modules are left out unless
--tests. `.ci/run` runs it on every crate.
"""
import os, re, sys

def strip_comments(s):
    s = re.sub(r'//[^\n]*', '', s)
    s = re.sub(r'/\*.*?\*/', '', s, flags=re.S)
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', s)
    return s

def drop_test_mods(s):
    out = []
    i = 0
    while True:
        m = re.search(r'#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{', s[i:])
        if not m:
            out.append(s[i:]); break
        start = i + m.start(); j = i + m.end(); depth = 1
        while depth and j < len(s):
            if s[j] == '{': depth += 1
            elif s[j] == '}': depth -= 1
            j += 1
        out.append(s[i:start]); i = j
    return ''.join(out)

def modpath_of(root, f, prefix):
    rel = os.path.relpath(f, root)[:-3].split(os.sep)
    if rel[-1] in ('mod', 'lib', 'main'):
        rel = rel[:-1]
    return tuple(([prefix] if prefix else []) + rel) if prefix else tuple(rel)

def expand_use(tree):
    """Yields paths (lists of segments) of a use tree string."""
    tree = tree.strip()
    depth = 0
    # find top-level '{'
    idx = None
    for k, c in enumerate(tree):
        if c == '{' and depth == 0: idx = k; break
    if idx is None:
        tree = re.sub(r'\s+as\s+\w+$', '', tree)
        yield [p for p in tree.split('::') if p]
        return
    head = [p for p in tree[:idx].split('::') if p]
    body = tree[idx+1:tree.rindex('}')]
    parts, depth, cur = [], 0, ''
    for c in body:
        if c == ',' and depth == 0: parts.append(cur); cur = ''; continue
        if c == '{': depth += 1
        if c == '}': depth -= 1
        cur += c
    parts.append(cur)
    for p in parts:
        if p.strip():
            for sub in expand_use(p):
                yield head + sub

def main():
    args = sys.argv[1:]
    tests = '--tests' in args
    args = [a for a in args if a != '--tests']
    rooms = []
    if '--rooms' in args:
        k = args.index('--rooms'); rooms = args[k+1:]; args = args[:k]
    root, prefix = args[0], (args[1] if len(args) > 1 else '')
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                files[modpath_of(root, p, '')] = p
    mods = set(files)
    edges = {m: set() for m in mods}
    srcs = {}
    for m, p in files.items():
        src = strip_comments(open(p).read())
        if not tests: src = drop_test_mods(src)
        srcs[m] = src

    def base_of(m, segs):
        """(start module, remaining segments) of a path written in module m, or None."""
        if segs[0] == 'crate':
            rest = segs[1:]
            if prefix:
                pre = prefix.split('::')
                if rest[:len(pre)] != pre: return None
                rest = rest[len(pre):]
            return (), rest
        if segs[0] in ('super', 'self'):
            base, rest = m, segs
            while rest and rest[0] in ('super', 'self'):
                if rest[0] == 'super': base = base[:-1]
                rest = rest[1:]
            return tuple(base), rest
        if m + (segs[0],) in mods:  # a child module named without `self::`
            return tuple(m), segs
        return None

    # re-exports: module -> {name: path segments as written}
    reexports = {m: {} for m in mods}
    for m, src in srcs.items():
        for u in re.finditer(r'\bpub(?:\([^)]*\))?\s+use\s+([^;]+);', src):
            for segs in expand_use(u.group(1)):
                segs = [x.strip() for x in segs]
                alias = re.search(r'\bas\s+(\w+)\s*$', u.group(1))
                name = segs[-1]
                if name in ('*', 'self'): continue
                reexports[m][name] = segs

    def resolve(m, segs, depth=0):
        b = base_of(m, segs)
        if b is None: return None
        cur, rest = b
        i = 0
        while i < len(rest) and cur + (rest[i],) in mods:
            cur = cur + (rest[i],); i += 1
        if i < len(rest) and depth < 10 and rest[i] in reexports.get(cur, {}):
            target = resolve(cur, reexports[cur][rest[i]], depth + 1)
            if target is not None: return target
        return cur if cur in mods else None

    for m, src in srcs.items():
        paths = []
        for u in re.finditer(r'\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);', src):
            if u.group(1): continue  # re-exports are followed, not counted
            paths += list(expand_use(u.group(2)))
        for q in re.finditer(r'(?<![:\w])((?:crate|super|self)(?:::\w+)+)', src):
            paths.append(q.group(1).split('::'))
        for segs in paths:
            segs = [x.strip() for x in segs]
            if not segs: continue
            t = resolve(m, segs)
            if t is not None and t != m:
                edges[m].add(t)
    def name(t): return '::'.join(t) or '<root>'
    def cycles(g):
        # Tarjan SCC
        index, low, st, on, out, c = {}, {}, [], set(), [], [0]
        sys.setrecursionlimit(10000)
        def sc(v):
            index[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
            for w in g[v]:
                if w not in index: sc(w); low[v] = min(low[v], low[w])
                elif w in on: low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = st.pop(); on.discard(w); comp.append(w)
                    if w == v: break
                if len(comp) > 1: out.append(comp)
        for v in g:
            if v not in index: sc(v)
        return out
    # A child using its parent's items while the parent uses the child's is a cycle; a parent's
    # `pub use x::Y` only re-exports, so it is followed, not counted.
    found = 0
    fc = cycles(edges)
    found += len(fc)
    print(f'{root}: {len(mods)} modules, {sum(len(v) for v in edges.values())} edges' + (' (tests included)' if tests else ''))
    print('file-level cycles:', len(fc))
    for comp in fc:
        print('  ', ' <-> '.join(sorted(name(x) for x in comp)))
        for a in comp:
            for b in edges[a]:
                if b in comp: print('      ', name(a), '->', name(b))
    for r in rooms:
        rt = tuple(r.split('::')) if r else ()
        def room(t):
            if t[:len(rt)] == rt and len(t) > len(rt): return t[:len(rt)+1]
            return None
        g = {}
        for a, bs in edges.items():
            ra = room(a)
            if ra is None: continue
            g.setdefault(ra, set())
            for b in bs:
                rb = room(b)
                if rb is not None and rb != ra: g[ra].add(rb); g.setdefault(rb, set())
        rc = cycles(g)
        found += len(rc)
        print(f'room-level ({r}::*) cycles:', len(rc))
        for comp in rc: print('  ', ' <-> '.join(sorted(name(x) for x in comp)))
        for a in sorted(g): print('    ', name(a), '->', ', '.join(sorted(name(b) for b in g[a])) or '-')

    return 1 if found else 0


sys.exit(main())
