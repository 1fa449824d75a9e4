import Foundation

/// What DPMSolverMultistepScheduler and DPMSolverMultistepInverseScheduler share: the schedule
/// set by setTimesteps, the step counter, the history of data predictions, and the multistep
/// DPM-Solver++ update of Lu et al. 2022 ("DPM-Solver++: Fast Solver for Guided Sampling of
/// Diffusion Probabilistic Models", arXiv 2211.01095) in diffusers' form. The two schedulers
/// differ only in their timesteps and σ, and in when the last step is first order.
///
/// Notation (diffusers'): σ is the schedule's σ = √((1 − ᾱ)/ᾱ); a latent at σ is α·x₀ + σ_t·ε
/// with α = 1/√(σ² + 1), σ_t = σ·α; λ = log α − log σ_t (half the log-SNR); h = λ_t − λ_s.
/// Every scalar is a float32 0-dim tensor in diffusers and every elementwise operation is rounded
/// to float32 in torch's order, so the same is done here.
struct DPMSolverMultistep {
    let order: Int
    let solverType: DPMSolverConfig.SolverType
    let predictionType: PredictionType
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    /// The schedule, in stepping order, and σ at each timestep followed by the σ the last step
    /// reaches (empty before setTimesteps).
    let timesteps: [Int]
    let sigmas: [Float]
    /// model_outputs: the data predictions x̂₀ of the last `order` steps, oldest first.
    private(set) var dataPredictions: [Tensor?]
    /// lower_order_nums: steps taken since setTimesteps, at most `order`.
    private(set) var lowerOrderSteps = 0
    /// step_index: the place in the schedule of the next step (set by the first one).
    private var stepIndex: Int?

    /// A fresh solver on a schedule (what diffusers' set_timesteps resets).
    init(_ config: DPMSolverConfig, timesteps: [Int] = [], sigmas: [Float] = []) {
        order = config.solverOrder
        solverType = config.solverType
        predictionType = config.predictionType
        lowerOrderFinal = config.lowerOrderFinal
        eulerAtFinal = config.eulerAtFinal
        self.timesteps = timesteps
        self.sigmas = sigmas
        dataPredictions = Array(repeating: nil, count: config.solverOrder)
    }

    /// diffusers' step, for the scheduler called `name`, from σ_s = sigmas[i] to
    /// σ_t = sigmas[i + 1]. The first step after setTimesteps finds its place i in the schedule
    /// (diffusers' _init_step_index; it may start anywhere, as the pipeline's strength does), the
    /// ones after must follow in order. The model output becomes the data prediction x̂₀
    /// (convert_model_output), joins the history, and the multistep update (`update`) is of order
    /// 1 on the first step, for a first-order solver, or on the last step with euler_at_final,
    ///   with lower_order_final below 15 steps, or when `firstOrderLastStep` (the forward
    ///   scheduler's final σ of zero);
    /// 2 on the second step, for a second-order solver, or on the step before the last with
    ///   lower_order_final below 15 steps;
    /// 3 otherwise.
    mutating func step(modelOutput: Tensor, timestep t: Int, sample: Tensor, scheduler name: String,
                       firstOrderLastStep: Bool) throws -> Tensor {
        guard !timesteps.isEmpty else { throw ToolError("\(name) step called before setTimesteps") }
        guard modelOutput.shape == sample.shape else {
            throw ToolError("\(name) step: model output \(modelOutput.shape) and sample \(sample.shape) differ in shape")
        }
        let i = try stepIndex ?? DPMSolverConfig.index(of: t, in: timesteps, scheduler: "\(name) step")
        guard i < timesteps.count, timesteps[i] == t else {
            throw ToolError("\(name) step: timestep \(t) is not the next one of the schedule — the multistep solver steps through it in order")
        }
        let n = timesteps.count
        let lastFirstOrder = i == n - 1 && (eulerAtFinal || (lowerOrderFinal && n < 15) || firstOrderLastStep)
        let beforeLastSecondOrder = i == n - 2 && lowerOrderFinal && n < 15
        dataPredictions.removeFirst()
        dataPredictions.append(dataPrediction(modelOutput, sample: sample, sigma: sigmas[i]))
        let stepOrder: Int
        if order == 1 || lowerOrderSteps < 1 || lastFirstOrder {
            stepOrder = 1
        } else if order == 2 || lowerOrderSteps < 2 || beforeLastSecondOrder {
            stepOrder = 2
        } else {
            stepOrder = 3
        }
        let out = update(order: stepOrder, sample: sample, sigmaT: sigmas[i + 1], sigmaS: sigmas[i],
                         sigmaS1: stepOrder >= 2 ? sigmas[i - 1] : 0, sigmaS2: stepOrder == 3 ? sigmas[i - 2] : 0)
        lowerOrderSteps = min(lowerOrderSteps + 1, order)
        stepIndex = i + 1
        return out
    }

    /// diffusers' _sigma_to_alpha_sigma_t: α = 1/√(σ² + 1), σ_t = σ·α.
    @inline(__always)
    static func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    /// λ = log α − log σ_t (+∞ at σ = 0, the forward scheduler's final "zero" σ).
    @inline(__always)
    static func lambda(_ sigma: Float) -> Float {
        let (a, s) = alphaSigma(sigma)
        return log(a) - log(s)
    }

    /// convert_model_output for DPM-Solver++: the data prediction x̂₀ at σ (Lu et al. 2022, §3:
    /// the solver integrates the data-prediction model).
    ///   epsilon:       x̂₀ = (x − σ_t·ε̂)/α
    ///   v_prediction:  x̂₀ = α·x − σ_t·v̂
    ///   sample:        x̂₀ = the model output
    func dataPrediction(_ modelOutput: Tensor, sample: Tensor, sigma: Float) -> Tensor {
        let (a, s) = Self.alphaSigma(sigma)
        switch predictionType {
        case .epsilon: return Elementwise.map2(sample, modelOutput) { x, e in (x - s * e) / a }
        case .vPrediction: return Elementwise.map2(sample, modelOutput) { x, v in a * x - s * v }
        case .sample: return modelOutput
        }
    }

    /// The multistep DPM-Solver++ update from σ_s to σ_t (diffusers' dpm_solver_first_order_update,
    /// multistep_dpm_solver_second_order_update and _third_order_update), with D0 = x̂₀ of this
    /// step, m1, m2 those of the one and two steps before, h = λ_t − λ_s0, h₀ = λ_s0 − λ_s1,
    /// h₁ = λ_s1 − λ_s2, r₀ = h₀/h, r₁ = h₁/h:
    ///
    ///   order 1 (the paper's eq. (8), DDIM in λ):  x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0
    ///   order 2, D1 = (D0 − m1)/r₀ (Algorithm 2, "DPM-Solver++(2M)"):
    ///     midpoint:  x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 − ½·α_t(e^{−h} − 1)·D1
    ///     heun:      x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1
    ///   order 3, D1₀ = (D0 − m1)/r₀, D1₁ = (m1 − m2)/r₁, D1 = D1₀ + r₀/(r₀ + r₁)·(D1₀ − D1₁),
    ///   D2 = (D1₀ − D1₁)/(r₀ + r₁):
    ///     x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1
    ///           − α_t((e^{−h} − 1 + h)/h² − ½)·D2
    ///
    /// where σ_t, σ_s are the σ_t of `alphaSigma`. At σ_t = 0 (the forward scheduler's final
    /// "zero" σ, always first order) h = +∞ and the update returns D0 = x̂₀ exactly.
    func update(order stepOrder: Int, sample: Tensor, sigmaT: Float, sigmaS: Float, sigmaS1: Float, sigmaS2: Float) -> Tensor {
        let (alphaT, sT) = Self.alphaSigma(sigmaT)
        let (_, s0) = Self.alphaSigma(sigmaS)
        let lambdaT = log(alphaT) - log(sT), lambdaS0 = Self.lambda(sigmaS)
        let h = lambdaT - lambdaS0
        let expm = exp(-h) - 1
        let ratio = sT / s0                // σ_t/σ_s
        let c0 = alphaT * expm             // α_t(e^{−h} − 1)
        let d0 = dataPredictions[order - 1]!
        var out = [Float](repeating: 0, count: sample.count)
        sample.data.withUnsafeBufferPointer { x in
            d0.data.withUnsafeBufferPointer { m0 in
                out.withUnsafeMutableBufferPointer { o in
                    switch stepOrder {
                    case 1:
                        for k in 0..<o.count { o[k] = ratio * x[k] - c0 * m0[k] }
                    case 2:
                        let r0 = (lambdaS0 - Self.lambda(sigmaS1)) / h
                        let invR0 = 1 / r0
                        let c1 = solverType == .midpoint ? 0.5 * c0 : alphaT * (expm / h + 1)
                        let m1 = dataPredictions[order - 2]!
                        m1.data.withUnsafeBufferPointer { m1 in
                            for k in 0..<o.count {
                                let d1 = invR0 * (m0[k] - m1[k])
                                let base = ratio * x[k] - c0 * m0[k]
                                o[k] = solverType == .midpoint ? base - c1 * d1 : base + c1 * d1
                            }
                        }
                    default:
                        let lambdaS1 = Self.lambda(sigmaS1)
                        let r0 = (lambdaS0 - lambdaS1) / h, r1 = (lambdaS1 - Self.lambda(sigmaS2)) / h
                        let invR0 = 1 / r0, invR1 = 1 / r1
                        let mix = r0 / (r0 + r1), invSum = 1 / (r0 + r1)
                        let c1 = alphaT * (expm / h + 1)
                        let c2 = alphaT * ((expm + h) / (h * h) - 0.5)
                        let m1 = dataPredictions[order - 2]!, m2 = dataPredictions[order - 3]!
                        m1.data.withUnsafeBufferPointer { m1 in
                            m2.data.withUnsafeBufferPointer { m2 in
                                for k in 0..<o.count {
                                    let d10 = invR0 * (m0[k] - m1[k]), d11 = invR1 * (m1[k] - m2[k])
                                    let d1 = d10 + mix * (d10 - d11)
                                    let d2 = invSum * (d10 - d11)
                                    o[k] = ((ratio * x[k] - c0 * m0[k]) + c1 * d1) - c2 * d2
                                }
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: sample.shape, data: out)
    }
}
