"""The recording scaffold the fixture generators' Capture classes share: a log of (tag, value) in
call order, and the undo list that puts every wrapped function back on exit."""


class CaptureBase:
    def __init__(self, pipe):
        self.pipe, self.log, self.undo = pipe, [], []

    def __exit__(self, *exc):
        for u in reversed(self.undo):
            u()

    def get(self, tag):
        return [v for t, v in self.log if t == tag]
