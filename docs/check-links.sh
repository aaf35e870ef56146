#!/usr/bin/env bash
# Checks that README.md and docs/*.md cite only what the repository holds.
#
# Fails, naming the file, line and citation, for
#   - a relative Markdown link (`[text](target)` or `[label]: target`) whose
#     target is not in the repository, or that leaves it;
#   - a backticked repository path (`host/...`, `docs/...`, `wit/...`,
#     `tests/...`, `example-agents/...`, `guest-sdk/...`) that is not in the
#     repository (a `*` in it must match something);
#   - any `../` path, in prose, code spans or code blocks, that climbs out of
#     the repository or names nothing in it (relative to the file that
#     cites it);
#   - a bare Markdown document name (`NAME.md` starting with a capital, no
#     directory) that names no file of the repository (a design note kept
#     elsewhere, say).
# "In the repository" means tracked by git (or staged), so a file that only
# exists in someone's work tree does not count; outside a git checkout the
# file system is asked instead.
#
# Usage: docs/check-links.sh   (from anywhere; exit 0 when every citation holds)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

use_git=false
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    use_git=true
fi

failures=0
declare -A reported=()
# fail KEY MESSAGE: reports MESSAGE once per KEY (a link is also a `../` token).
fail() {
    [[ -n ${reported[$1]:-} ]] && return 0
    reported[$1]=1
    printf '%s\n' "$2" >&2
    failures=$((failures + 1))
}

# normalise BASE TARGET: prints TARGET resolved against directory BASE (both
# relative to the repository root) with `.` and `..` removed, or returns 1
# when it climbs above the root.
normalise() {
    local base=$1 target=$2 part
    local -a parts=() segs=()
    # `read -a` splits without globbing, so a `*` in a path stays as it is.
    IFS=/ read -ra segs <<<"$base/$target"
    for part in "${segs[@]}"; do
        case $part in
            '' | .) ;;
            ..)
                ((${#parts[@]} > 0)) || return 1
                parts=("${parts[@]:0:${#parts[@]}-1}")
                ;;
            *) parts+=("$part") ;;
        esac
    done
    local IFS=/
    printf '%s' "${parts[*]}"
}

# in_repo PATH: whether PATH (relative to the root; may hold a `*` glob, may
# name a directory) is in the repository.
in_repo() {
    local path=${1%/}
    [[ -z $path ]] && return 0
    if [[ $path == *'*'* ]]; then
        compgen -G "$path" >/dev/null || return 1
    else
        [[ -e $path ]] || return 1
    fi
    if $use_git; then
        [[ -n $(git ls-files --cached -- "$path" | head -n 1) ]]
    fi
}

# git_or_find NAME: the repository's files called NAME, in any directory.
git_or_find() {
    if $use_git; then
        git ls-files --cached -- "$1" "*/$1"
    else
        find . -name "$1" -not -path './target/*' -print
    fi
}

# Lists the citations of one Markdown file, one per line: KIND<TAB>LINE<TAB>TEXT
# with KIND `link` (a Markdown link target), `path` (a backticked repository
# path), `up` (a token holding `../`) or `md` (a bare document name).
citations() {
    awk '
        function emit(kind, text) { printf "%s\t%d\t%s\n", kind, NR, text }
        # Every token holding "../", and every bare Markdown document name
        # (`NAME.md` starting with a capital, as README.md, FORMAT.md), wherever
        # it is (code blocks included). Lower-case names are left alone: they
        # are example guest files (`notes.md`), not citations.
        function ups(line,    n, i, toks, t) {
            n = split(line, toks, /[][:space:]`()"'"'"'<>,;|[]+/)
            for (i = 1; i <= n; i++) {
                t = toks[i]
                # Sentence punctuation after a path is not part of it.
                if (match(t, /[^.][.:!?]+$/)) t = substr(t, 1, RSTART)
                if (index(t, "../") > 0) emit("up", t)
                else if (t ~ /^[A-Z][A-Za-z0-9_.-]*\.md$/) emit("md", t)
            }
        }
        /^[[:space:]]*(```|~~~)/ { fenced = !fenced; next }
        fenced { ups($0); next }
        {
            line = $0
            ups(line)
            # Reference-style link definitions: [label]: target
            if (match(line, /^[[:space:]]*\[[^]]+\]:[[:space:]]*[^[:space:]]+/)) {
                def = substr(line, RSTART, RLENGTH)
                sub(/^[[:space:]]*\[[^]]+\]:[[:space:]]*/, "", def)
                emit("link", def)
            }
            # Code spans: backticked repository paths. Removed afterwards so
            # that a `[x](y)` shown as code is not taken for a link.
            rest = line; prose = ""
            while (match(rest, /`[^`]+`/)) {
                span = substr(rest, RSTART + 1, RLENGTH - 2)
                prose = prose substr(rest, 1, RSTART - 1)
                rest = substr(rest, RSTART + RLENGTH)
                if (span ~ /^(host|docs|wit|tests|example-agents|guest-sdk)\/[^[:space:]]*$/)
                    emit("path", span)
            }
            prose = prose rest
            # Inline links and images: [text](target "title")
            while (match(prose, /\]\([^)[:space:]]+/)) {
                emit("link", substr(prose, RSTART + 2, RLENGTH - 2))
                prose = substr(prose, RSTART + RLENGTH)
            }
        }
    ' "$1"
}

docs=(README.md)
for f in docs/*.md; do
    [[ -e $f ]] && docs+=("$f")
done

checked=0
for doc in "${docs[@]}"; do
    dir=$(dirname "$doc")
    # Collected first, so that a failing awk stops the script (set -e).
    found=$(citations "$doc")
    while IFS=$'\t' read -r kind line text; do
        [[ -n $kind ]] || continue
        checked=$((checked + 1))
        where="$doc:$line"
        case $kind in
            up | link)
                case $text in
                    '#'* | [a-zA-Z]*://* | mailto:*) continue ;;
                esac
                target=${text%%#*}
                target=${target%%\?*}
                key="$where|$target"
                if [[ $target == /* ]]; then
                    fail "$key" "$where: $target is an absolute path, outside the repository"
                elif ! resolved=$(normalise "$dir" "$target"); then
                    fail "$key" "$where: $target leaves the repository"
                elif ! in_repo "$resolved"; then
                    fail "$key" "$where: $target names ${resolved:-the root}, which is not in the repository"
                fi
                ;;
            md)
                if ! in_repo "$text" && [[ -z $(git_or_find "$text") ]]; then
                    fail "$where|$text" "$where: $text is not a document of the repository"
                fi
                ;;
            path)
                if ! in_repo "$text"; then
                    fail "$where|$text" "$where: \`$text\` is not in the repository"
                fi
                ;;
        esac
    done <<<"$found"
done

if ((failures > 0)); then
    printf '%d citation(s) in %s do not hold\n' "$failures" "${docs[*]}" >&2
    exit 1
fi
printf 'ok: %d citation(s) in %s hold\n' "$checked" "${docs[*]}"
