/// The schedule of an inverted stack: invert records the timesteps it inverted through (metadata
/// `timesteps`, noisiest first), and denoise must retrace exactly those. The count of latents
/// alone does not pin them down: a DPM-Solver stack and a DDIM one of the same steps and
/// strength hold as many latents at other timesteps, so a DPM stack that lost its `scheduler`
/// key (a `tensor to-npy`/`from-npy` detour) was denoised with DDIM, status 0, another picture.
public enum StackSchedule {
    public static let timestepsKey = "timesteps"
    /// The scheduler invert ran (SchedulerKind's raw value); stacks inverted before the option
    /// existed lack it, and were inverted with DDIM.
    public static let schedulerKey = "scheduler"

    /// The timesteps as invert writes them: "801,601,401,201,1".
    public static func format(_ noisiestFirst: [Int]) -> String {
        noisiestFirst.map(String.init).joined(separator: ",")
    }

    /// The timesteps invert records for a schedule: the inverse scheduler's first
    /// ⌊steps·strength⌋ timesteps, noisiest first, with `folder`'s scheduler config.
    public static func timesteps(_ kind: SchedulerKind, folder: ModelFolder, steps: Int, strength: Double) throws -> [Int] {
        var s = try kind.inversion(folder: folder)
        try s.setTimesteps(steps)
        return try s.strengthTimesteps(strength: strength).reversed()
    }

    /// Refuses a stack whose recorded timesteps are not those of the schedule denoise is about to
    /// run (`kind` at `steps` and `strength`), naming the scheduler and steps they do match when
    /// some do. `count` is the stack's number of latents. `schedulerGiven`: the user gave
    /// --scheduler (`kind` is then that one; else the stack's `scheduler`, else DDIM).
    ///
    /// A stack without timesteps (invert always wrote them: its metadata was lost or rewritten)
    /// is taken only when its scheduler is stated — the stack's key, or --scheduler — since
    /// nothing else tells DDIM from DPM-Solver; with neither it is refused rather than denoised
    /// with DDIM on a guess.
    public static func check(metadata: [String: String], count: Int, kind: SchedulerKind, schedulerGiven: Bool,
                             steps: Int, strength: Double, folder: ModelFolder) throws {
        let named = metadata[schedulerKey]
        let schedulerStated = schedulerGiven || named != nil
        guard let text = metadata[timestepsKey] else {
            guard schedulerStated else {
                throw ToolError("the inverted stack records neither its timesteps nor its scheduler (metadata lost, e.g. through tensor to-npy/from-npy), so DDIM and DPM-Solver cannot be told apart — give --scheduler ddim or dpm as used for invert, or restore the metadata (tensor from-npy --meta timesteps=… --meta scheduler=…), or invert again")
            }
            return
        }
        let damaged = "the stack is damaged or was not written by invert; invert again"
        guard let recorded = parse(text) else {
            throw ToolError("the inverted stack's metadata timesteps='\(text.prefix(40))' is not a list of timesteps like 801,601,401 — \(damaged)")
        }
        guard recorded.count == count else {
            throw ToolError("the inverted stack holds \(count) latents but its metadata lists \(recorded.count) timesteps — \(damaged)")
        }
        let expected = try timesteps(kind, folder: folder, steps: steps, strength: strength)
        if recorded == expected { return }
        let assumed = schedulerStated ? "" : "; the stack names no scheduler, so ddim was assumed"
        let what = "the inverted stack's timesteps (\(abbreviated(recorded))) are not those of --scheduler \(kind.rawValue) at \(steps) steps, strength \(strength) (\(abbreviated(expected))\(assumed))"
        var matches = try self.matches(recorded, folder: folder, preferredSteps: steps)
        guard !matches.isEmpty else {
            throw ToolError("\(what), nor those of any scheduler and step count with this model's scheduler config — the stack was made with another scheduler config or is damaged; invert again with --model \(folder.root)")
        }
        // A scheduler that fits at the stack's own steps is the answer; others fit only at
        // other step counts and strengths.
        let atSteps = matches.filter { $0.steps.contains(steps) }
        if !atSteps.isEmpty {
            let kinds = atSteps.map { "--scheduler \($0.kind.rawValue)" }.joined(separator: " or ")
            if let named {
                throw ToolError("\(what); they are those of \(kinds) at \(steps) steps, though the stack names scheduler \(named) — its metadata is inconsistent; invert again")
            }
            throw ToolError("\(what); they are those of \(kinds) at \(steps) steps — denoise with \(kinds), or invert again")
        }
        matches = matches.map { ($0.kind, Array($0.steps.prefix(3)) + ($0.steps.count > 3 ? [-1] : [])) }
        let described = matches.map { m in
            "--scheduler \(m.kind.rawValue) --steps " + m.steps.map { $0 < 0 ? "…" : String($0) }.joined(separator: "|")
        }
        throw ToolError("\(what); they match \(described.joined(separator: " or ")) — denoise with those options and the --strength given to invert, or invert again")
    }

    /// "801,601,401" from the metadata, nil unless a non-empty list of integers.
    static func parse(_ text: String) -> [Int]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard !parts.isEmpty else { return nil }
        var out: [Int] = []
        for p in parts {
            guard !p.isEmpty, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(p) else { return nil }
            out.append(v)
        }
        return out
    }

    /// "801,601,…,1": at most six timesteps shown.
    static func abbreviated(_ t: [Int]) -> String {
        t.count <= 6 ? format(t) : "\(format(Array(t.prefix(4)))),…,\(t.last!)"
    }

    /// The schedulers and step counts whose inversion passes through exactly these timesteps
    /// (some strength takes the first `recorded.count` of them), `preferredSteps` first.
    static func matches(_ recorded: [Int], folder: ModelFolder, preferredSteps: Int) throws -> [(kind: SchedulerKind, steps: [Int])] {
        let ascending = Array(recorded.reversed())
        var out: [(kind: SchedulerKind, steps: [Int])] = []
        for kind in SchedulerKind.allCases {
            var s = try kind.inversion(folder: folder)
            var found: [Int] = []
            let train = s.alphasCumprod.count
            let candidates = [preferredSteps] + (max(1, ascending.count)...max(1, train)).filter { $0 != preferredSteps }
            for n in candidates where n >= ascending.count && n <= train {
                // Step counts a scheduler config refuses (repeated or out-of-range timesteps) match nothing.
                guard (try? s.setTimesteps(n)) != nil, let all = try? s.strengthTimesteps(strength: 1) else { continue }
                if all.count >= ascending.count && Array(all.prefix(ascending.count)) == ascending { found.append(n) }
            }
            if !found.isEmpty { out.append((kind, found)) }
        }
        return out
    }
}
