import Foundation

/// Timestep arithmetic shared by every scheduler (DDIM and DPM-Solver++, forward and inverse):
/// spacing, the strength cut and add_noise, reproducing numpy's float64 behaviour.
public enum TimestepSchedule {
    /// np.linspace(0, last, n).round() (round half to even), as integers, ascending.
    static func linspace(to last: Int, count n: Int) -> [Int] {
        if n == 1 { return [0] }
        let step = Double(last) / Double(n - 1)
        return (0..<n).map { i in
            let v = i == n - 1 ? Double(last) : Double(i) * step + 0
            return Int(v.rounded(.toNearestOrEven))
        }
    }

    /// np.round(np.arange(T, 0, −T/n)) as integers, descending (or np.arange(from, 0, −T/n): the
    /// DPM-Solver schedulers start below T when lambda_min_clipped cuts the noisiest timesteps).
    /// numpy's arange fills `start + i·δ` with δ = (start + step) − start, so that is what is
    /// computed here.
    static func trailing(train t: Int, count n: Int, from first: Int? = nil) -> [Int] {
        let step = -(Double(t) / Double(n))
        let start = Double(first ?? t)
        let length = Int((-start / step).rounded(.up))
        let delta = (start + step) - start
        return (0..<length).map { i in
            let v = i == 0 ? start : (i == 1 ? start + step : start + Double(i) * delta)
            return Int(v.rounded(.toNearestOrEven))
        }
    }

    /// Refuses inference timesteps outside the training schedule (a steps_offset too large for
    /// this many steps), which would index past ᾱ.
    static func requireWithinSchedule(_ timesteps: [Int], train t: Int, steps: Int, offset: Int) throws {
        guard let bad = timesteps.first(where: { $0 < 0 || $0 >= t }) else { return }
        throw ToolError("scheduler_config.json: steps_offset \(offset) with \(steps) steps gives timestep \(bad), outside the \(t) training timesteps — use fewer steps, or a scheduler config with a smaller steps_offset")
    }

    /// Every scheduler's set_timesteps takes 1 … T steps.
    static func requireSteps(_ steps: Int, train t: Int) throws {
        guard steps >= 1 else { throw ToolError("the number of inference steps must be at least 1, got \(steps)") }
        guard steps <= t else {
            throw ToolError("\(steps) inference steps is more than the scheduler's \(t) training timesteps")
        }
    }

    /// t_start of the DiffEdit pipeline's get_timesteps / get_inverse_timesteps:
    /// n − min(int(n·strength), n), at least 0.
    public static func startIndex(steps n: Int, strength: Double) throws -> Int {
        guard strength >= 0, strength <= 1 else {
            throw ToolError("strength must be in [0, 1], got \(strength)")
        }
        let initTimestep = min(Int(Double(n) * strength), n)
        return max(n - initTimestep, 0)
    }

    static func addNoise(alphasCumprod: [Float], original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        for t in timesteps where t < 0 || t >= alphasCumprod.count {
            throw ToolError("add_noise: timestep \(t) is outside 0..<\(alphasCumprod.count)")
        }
        return try addNoise(original: original, noise: noise, timesteps: timesteps) { t in
            let a = alphasCumprod[t]
            return (a.squareRoot(), (1 - a).squareRoot())
        }
    }

    /// c₀·x + c₁·ε per batch element, (c₀, c₁) = `coefficients(t)` for its timestep (one
    /// timestep for all, or one per element): the add_noise of every scheduler, which differ only
    /// in how they get the two factors.
    static func addNoise(original: Tensor, noise: Tensor, timesteps: [Int],
                         coefficients: (Int) throws -> (Float, Float)) throws -> Tensor {
        guard original.shape == noise.shape else {
            throw ToolError("add_noise: sample \(original.shape) and noise \(noise.shape) differ in shape")
        }
        let batch = original.shape.first ?? 1
        guard timesteps.count == 1 || timesteps.count == batch else {
            throw ToolError("add_noise: \(timesteps.count) timesteps for a batch of \(batch)")
        }
        let factors = try (0..<batch).map { b in try coefficients(timesteps.count == 1 ? timesteps[0] : timesteps[b]) }
        let inner = original.count / max(batch, 1)
        var out = [Float](repeating: 0, count: original.count)
        original.data.withUnsafeBufferPointer { xp in
            noise.data.withUnsafeBufferPointer { np in
                out.withUnsafeMutableBufferPointer { op in
                    for b in 0..<batch {
                        let (sa, sb) = factors[b]
                        for i in (b * inner)..<((b + 1) * inner) { op[i] = sa * xp[i] + sb * np[i] }
                    }
                }
            }
        }
        return Tensor(shape: original.shape, data: out)
    }
}
