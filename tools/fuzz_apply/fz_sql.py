"""SQL text helpers: literals that survive any standard_conforming_strings, attacker texts."""

CANARY = "FZCANARY"


def lit(s):
    """A dollar-quoted literal whose tag the text does not contain: the same meaning whatever
    standard_conforming_strings or backslash_quote the session has, and pasteable into psql."""
    if "'" not in s and "\\" not in s and "$" not in s and not any(ord(c) < 32 for c in s):
        return f"'{s}'"
    n = 0
    while True:
        tag = f"$q{n}$" if n else "$q$"
        if tag not in s and not s.endswith(tag[:-1]):
            return f"{tag}{s}{tag}"
        n += 1


def text_expr(parts):
    """An expression concatenating plain text and special characters (given as ints): control
    bytes, NEL and U+2028 reach the server without a backslash escape."""
    out = []
    for p in parts:
        out.append(f"chr({p})" if isinstance(p, int) else lit(p))
    return " || ".join(out) if out else "''"


def ident_ok(name):
    return all(c.isalnum() or c in "._" for c in name)
