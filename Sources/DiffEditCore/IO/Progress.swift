#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Progress of a long stage on stderr: "tool: label i/T  elapsed 3.1s  eta 12.0s".
/// Shown when stderr is a terminal or when the user asked (--progress); --quiet silences it,
/// so a tool in a pipeline writes nothing on stderr unless asked.
public final class ProgressReporter {
    public let tool: String
    public let enabled: Bool
    let interactive: Bool
    var label = ""
    var total = 0
    var start = Date()
    var lastDraw = Date.distantPast
    /// Least time between two lines inside a step when stderr is a log.
    var partLogInterval: TimeInterval = 1

    /// `enabled` = (stderr is a terminal or `force`) and not `quiet`.
    public init(tool: String, quiet: Bool, force: Bool) {
        self.tool = tool
        interactive = isatty(2) != 0
        enabled = !quiet && (force || interactive)
    }

    /// Starts a stage of `total` steps.
    public func begin(_ label: String, total: Int) {
        self.label = label
        self.total = total
        start = Date()
        lastDraw = .distantPast
    }

    /// Step `done` of the current stage has finished.
    public func update(_ done: Int) {
        draw(Double(done), "\(label) \(done)/\(total)", final: done >= total, logEvery: 0)
    }

    /// Inside step `done + 1` of the stage, `part` of its `parts` are finished: a long step shows
    /// its own progress ("inversion step 3/50, regularisation 40/100"). A log gets such a line at
    /// most once a second.
    public func update(_ done: Int, part: Int, of parts: Int, _ what: String) {
        guard parts > 0 else { return }
        draw(Double(done) + Double(part) / Double(parts),
             "\(label) \(done + 1)/\(total), \(what) \(part)/\(parts)", final: false, logEvery: partLogInterval)
    }

    private func draw(_ done: Double, _ text: String, final: Bool, logEvery: TimeInterval) {
        guard enabled else { return }
        let now = Date()
        // A terminal line is redrawn at most 10 times a second; a log gets every step.
        if now.timeIntervalSince(lastDraw) < (interactive ? (final ? 0 : 0.1) : logEvery) { return }
        lastDraw = now
        let elapsed = now.timeIntervalSince(start)
        let eta = done > 0 ? elapsed / done * (Double(total) - done) : 0
        let line = "\(tool): \(text)  elapsed \(ProgressReporter.format(elapsed))  eta \(ProgressReporter.format(eta))"
        let text = interactive ? "\r\(line)\u{1B}[K" + (final ? "\n" : "") : line + "\n"
        _ = text.withCString { fputs($0, stderr) }
    }

    static func format(_ s: TimeInterval) -> String {
        if s < 60 { return String(format: "%.1fs", s) }
        let m = Int(s) / 60
        return String(format: "%dm%02ds", m, Int(s) % 60)
    }
}
