"""The recording scaffold the fixture generators' Capture classes share: a log of (tag, value) in
call order, the wrapper that records a method's calls into it, and the undo list that puts every
wrapped function back on exit."""
import functools


class CaptureBase:
    def __init__(self, pipe):
        self.pipe, self.log, self.undo = pipe, [], []

    def wrap(self, obj, attr, tag, rec):
        """Records rec(args, kwargs, result) under tag at every call of obj.attr (an instance attribute
        shadowing the method, deleted on exit)."""
        orig = getattr(obj, attr)
        log = self.log

        @functools.wraps(orig)
        def wrapped(*a, **k):
            r = orig(*a, **k)
            log.append((tag, rec(a, k, r)))
            return r
        setattr(obj, attr, wrapped)
        self.undo.append(lambda: delattr(obj, attr))

    def __exit__(self, *exc):
        for u in reversed(self.undo):
            u()

    def get(self, tag):
        return [v for t, v in self.log if t == tag]
