"""What Synthea's built-in Java code provides and the JSON modules rely on, rebuilt from
public facts: growth and vital signs, smoking and alcohol, background mortality, the
wellness-visit schedule with its vital-sign observations and immunizations, and
symptom-driven urgent-care and emergency visits.

One :class:`Lifecycle` per patient acts as the engine's hooks (death, symptoms) and owns the
patient's SimPy processes other than the modules. Every number comes from
``simulator.facts`` (data files with cited sources) or is cited where it is defined.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Generator
from typing import Any

import numpy as np

from simulator import facts
from simulator.person import WATCH_VITAL, Person, WellnessVisit
from simulator.record import Code, Encounter, Immunization

__all__ = ["Lifecycle", "sample_age_at_death"]

_WELLNESS_CODE = (Code("SNOMED-CT", "410620009", "Well child visit (procedure)"),
                  Code("SNOMED-CT", "162673000", "General examination of patient (procedure)"))
_URGENT_CODE = (Code("SNOMED-CT", "702927004", "Urgent care clinic (environment)"),)
_EMERGENCY_CODE = (Code("SNOMED-CT", "50849002", "Emergency room admission (procedure)"),)
_NATURAL_DEATH = (Code("SNOMED-CT", "419620001", "Death (event)"),)

# Symptom-driven visits: a total symptom severity (0-100 per symptom, summed) at or above
# these thresholds sends the patient to urgent care or the emergency department. Synthea's
# encounter module uses the same two-threshold idea; the values are ours.
_URGENT_THRESHOLD = 150.0
_EMERGENCY_THRESHOLD = 300.0
_SYMPTOM_VISIT_GAP_DAYS = 7.0

# Laboratory-type "vital signs" that Synthea's modules read (VitalSign conditions and
# Observation vital_sign values). Adult reference values: means and standard deviations
# from NHANES 2017-2020 laboratory summaries (CDC NCHS Data Brief 395 for lipids; fasting
# glucose from NCHS Health E-Stat "Prevalence of prediabetes"), oxygen saturation and
# creatinine-based eGFR ranges from MedlinePlus reference ranges; CKD-EPI 2021 shows eGFR
# falling by about 1 mL/min/1.73m2 a year of age after 40.
_LABS = {
    # SD 40.6 rather than NHANES's reported spread about the mean: under a normal law it puts
    # 11.4% of adults at 240 mg/dL or more, the share NCHS Data Brief 363 (NHANES 2015-2018)
    # measures (the real distribution is skewed to the right, which a normal misses)
    "Total Cholesterol": (191.0, 40.6),
    "HDL": (53.0, 15.0),
    "LDL": (112.0, 33.0),
    "Triglycerides": (110.0, 50.0),
    "Glucose": (98.0, 10.0),
    "Microalbumin Creatinine Ratio": (12.0, 6.0),
    "Oxygen Saturation": (97.5, 1.0),
    # Basic metabolic panel, adult reference intervals (MedlinePlus "Basic metabolic panel"):
    # the mean is the middle of the interval and the SD a quarter of its width.
    "Urea Nitrogen": (13.5, 3.25),
    "Calcium": (9.4, 0.4),
    "Sodium": (140.0, 2.5),
    "Potassium": (4.25, 0.33),
    "Chloride": (102.0, 2.5),
    "Carbon Dioxide": (26.0, 2.0),
}
# eGFR (mL/min/1.73m2) at most, by the chronic kidney disease stage in the "ckd" attribute
# (3, 4, 5 and more): inside KDIGO 2012's categories G3 (30-59), G4 (15-29), G5 (under 15).
_EGFR_G3, _EGFR_G4, _EGFR_G5 = 55.0, 25.0, 12.0
# Serum creatinine by sex (mg/dL): MedlinePlus reference 0.74-1.35 (men), 0.59-1.04 (women).
_CREATININE = {"M": (1.05, 0.15), "F": (0.82, 0.11)}


def sample_age_at_death(rng_u: float, sex: str, excluding: frozenset[str] = frozenset()) -> float:
    """Age (years, fractional) at which background mortality ends a life, by inverting the
    survival curve of the US life table (without the causes in ``excluding``, which modules
    simulate themselves) with one uniform draw."""
    surv = _survival(sex, excluding)
    # surv[a] = probability of surviving to exact age a; find the year in which the
    # survival curve falls below 1 - u.
    target = 1.0 - rng_u
    a = int(np.searchsorted(-surv, -target, side="right")) - 1
    a = max(0, min(a, len(surv) - 2))
    hi, lo = surv[a], surv[a + 1]
    frac = (hi - target) / (hi - lo) if hi > lo else 0.5
    return a + min(max(frac, 0.0), 1.0)


_SURV: dict[tuple[str, frozenset[str]], np.ndarray] = {}


def _survival(sex: str, excluding: frozenset[str] = frozenset()) -> np.ndarray:
    key = (sex, excluding)
    s = _SURV.get(key)
    if s is None:
        q = np.array([facts.annual_death_probability(a, sex, excluding) for a in range(0, 101)])
        q[-1] = 1.0
        s = np.concatenate([[1.0], np.cumprod(1.0 - q)])
        _SURV[key] = s
    return s


class Lifecycle:
    """The per-patient processes and the engine hooks."""

    def __init__(self, person: Person, env: Any, end: float, stop: Any,
                 excluded_causes: frozenset[str] = frozenset()) -> None:
        self.person = person
        #: Causes of death the running modules simulate, taken out of background mortality.
        self.excluded_causes = excluded_causes
        self.env = env
        self.end = end
        self.stop = stop
        u = person.uniform
        self.sex = person.gender
        self.body = facts.body(self.sex)
        self.height_z = _normal(u)
        self.bmi_z = _normal(u)
        self.bp_z = (_normal(u), _normal(u))
        self.hr_z = _normal(u)
        self.rr_z = _normal(u)
        self.lab_z = {k: _normal(u) for k in _LABS}
        self.egfr_z = _normal(u)
        # The laboratory values that do not change over a life (each at its own z-score);
        # glucose, creatinine and eGFR are set at each update.
        self.labs = {name: round(max(0.0, mean + sd * self.lab_z[name]), 1)
                     for name, (mean, sd) in _LABS.items()}
        self.labs["Oxygen Saturation"] = min(100.0, self.labs["Oxygen Saturation"])
        cm, csd = _CREATININE[self.sex]
        self.labs["Creatinine"] = round(max(0.3, cm + csd * self.egfr_z * -1.0), 2)
        self.doses: dict[str, int] = {}
        self.last_symptom_visit = -math.inf
        person.wellness_visit = None
        person.next_wellness = env.event()

    # ----------------------------------------------------------------- hooks
    def die(self, person: Person, when: float, cause: tuple[Code, ...]) -> None:
        if person.death is not None and person.death <= when:
            return
        person.death = when
        person.death_cause = cause
        now = self.env.now
        if cause is not _NATURAL_DEATH:
            # Hospice modules read how long the patient has left once a module has set a
            # death date.
            person.set_attribute("days_until_death", max(0.0, when - now))
        if when <= now:
            if not self.stop.triggered:
                self.stop.succeed()
        else:
            ev = self.env.timeout(when - now)
            ev.callbacks.append(self._stop_at_death)

    def _stop_at_death(self, _ev: Any) -> None:
        p = self.person
        if p.death is not None and p.death <= self.env.now and not self.stop.triggered:
            self.stop.succeed()

    def symptom_changed(self, person: Person, t: float) -> None:
        total = person.symptom_total()
        if total < _URGENT_THRESHOLD or t - self.last_symptom_visit < _SYMPTOM_VISIT_GAP_DAYS:
            return
        self.last_symptom_visit = t
        emergency = total >= _EMERGENCY_THRESHOLD
        enc = Encounter("symptom_visit", t, _EMERGENCY_CODE if emergency else _URGENT_CODE,
                        "emergency" if emergency else "urgentcare")
        enc.end(t)
        person.record.encounters.append(enc)

    # ----------------------------------------------------------------- processes
    def start(self) -> None:
        env = self.env
        self.update_body(env.now)
        env.process(self._body_process())
        env.process(self._wellness_process())
        u = self.person.uniform()
        age = sample_age_at_death(u, self.sex, self.excluded_causes)
        self.die(self.person, self.person.birth + age * 365.25, _NATURAL_DEATH)

    def _body_process(self) -> Generator[Any, Any, None]:
        """Growth, vital signs, smoking and alcohol: monthly to age 3, quarterly to 20,
        then yearly; each update wakes Guards that read vital signs."""
        env = self.env
        person = self.person
        while True:
            age = (env.now - person.birth) / 365.25
            step = 30.4 if age < 3 else (91.3 if age < 20 else 365.25)
            yield env.timeout(step)
            if person.is_dead(env.now):
                return
            self.update_body(env.now)

    def update_body(self, t: float) -> None:
        person = self.person
        u = person.uniform
        age = max(0.0, (t - person.birth) / 365.25)
        body = self.body
        # BMI z drifts slowly (mean-reverting) so weight changes over a life.
        if age >= 2:
            self.bmi_z = 0.95 * self.bmi_z + 0.3 * _normal(u)
        height = body.height_cm(age, self.height_z)
        bmi = body.bmi(age, self.bmi_z)
        weight = bmi * (height / 100.0) ** 2
        z_s, z_d = self.bp_z
        if person.attributes.get("hypertension") is True:
            # Untreated hypertension: about 1.5 SD above the age/sex mean (JNC 8 stage 1-2).
            z_s, z_d = z_s + 1.5, z_d + 1.2
        sys_bp, dia_bp = body.blood_pressure(age, z_s, z_d)
        vit = person.vitals
        vit["Height"] = round(height, 1)
        vit["Weight"] = round(weight, 1)
        vit["BMI"] = round(bmi, 1)
        vit["Systolic Blood Pressure"] = round(sys_bp)
        vit["Diastolic Blood Pressure"] = round(dia_bp)
        vit["Heart Rate"] = round(body.heart_rate(age, self.hr_z))
        vit["Respiration Rate"] = round(body.respiratory_rate(age, self.rr_z))
        # Set again at every update: a module's VitalSign state may have changed one.
        vit.update(self.labs)
        if person.attributes.get("diabetes") is True:
            # diagnosed diabetes: fasting glucose >= 126 mg/dL (ADA)
            mean, sd = _LABS["Glucose"]
            vit["Glucose"] = round(max(0.0, mean + sd * self.lab_z["Glucose"] + 45.0), 1)
        vit["Blood Glucose"] = vit["Glucose"]
        egfr = 100.0 + 12.0 * self.egfr_z - max(0.0, age - 40.0)
        stage = person.attributes.get("ckd")
        if isinstance(stage, numbers.Real) and not isinstance(stage, bool) and stage >= 3:
            # chronic kidney disease stage 3 or worse. Synthea's modules set "ckd" to 0 for
            # everybody and to stages 1-2 when kidney damage does not lower eGFR yet.
            egfr = min(egfr, _EGFR_G5 if stage >= 5 else _EGFR_G4 if stage >= 4 else _EGFR_G3)
        vit["EGFR"] = round(max(5.0, egfr), 1)
        if age < 3:
            # Head circumference grows fastest in infancy (WHO child growth standards:
            # about 34-35 cm at birth, 46 cm at 12 months, 49 cm at 36 months).
            vit["Head Circumference"] = round(34.5 + 14.5 * (1 - math.exp(-age * 1.2))
                                              + 1.2 * self.height_z, 1)
            vit["Head Circumference Percentile"] = round(_percentile(self.height_z), 1)
        if age < 3:
            # Weight-for-length percentile of an infant, from its BMI z-score.
            person.set_attribute("current_weight_length_percentile", round(_percentile(self.bmi_z), 1))
        if age < 21:  # modules decide by calendar age whether to record it
            person.set_attribute("bmi_percentile", round(body.bmi_percentile(age, bmi), 1))
        self._behaviour(age, u)
        person.notify(WATCH_VITAL)

    def _behaviour(self, age: float, u: Any) -> None:
        person = self.person
        attrs = person.attributes
        if age < 12:
            attrs.setdefault("smoker", False)
            attrs.setdefault("alcoholic", False)
            return
        yearly_share = 0.25 if age < 20 else 1.0  # updates are quarterly before 20
        if attrs.get("smoker"):
            if u() < self.body.smoking_quit_probability(age) * yearly_share:
                person.set_attribute("smoker", False)
                person.set_attribute("quit smoking age", int(age))
        elif "quit smoking age" not in attrs:
            if u() < self.body.smoking_start_probability(age) * yearly_share:
                person.set_attribute("smoker", True)
        if age >= 18 and "drinker" not in attrs:
            attrs["drinker"] = u() < facts.alcohol_use_probability(self.sex)
            heavy = attrs["drinker"] and u() < (facts.heavy_drinking_probability(self.sex)
                                                / max(facts.alcohol_use_probability(self.sex), 1e-9))
            person.set_attribute("alcoholic", bool(heavy))

    def _wellness_process(self) -> Generator[Any, Any, None]:
        env = self.env
        person = self.person
        lived = (self.end - person.birth) / 365.25
        for age_days in facts.wellness_visit_ages_days(lived):
            when = person.birth + float(age_days)
            if when >= self.end:
                return
            if when > env.now:
                yield env.timeout(when - env.now)
            t = env.now
            if person.is_dead(t):
                return
            enc = Encounter("wellness", t, (_WELLNESS_CODE[0] if age_days < 18 * 365.25
                                             else _WELLNESS_CODE[1],), "wellness")
            enc.scheduled = True
            person.record.encounters.append(enc)
            # Vital signs are measured now; recording them is the modules' work (as in
            # Synthea, whose wellness_encounters module records them).
            self.update_body(t)
            self._immunize(enc, t, age_days)
            visit = WellnessVisit(enc, t)
            person.wellness_visit = visit
            waiting, person.next_wellness = person.next_wellness, env.event()
            waiting.succeed()
            # Two zero-time steps let every module woken by the visit (and what those wake
            # in turn) take part before the schedule closes the encounter.
            yield env.timeout(0)
            yield env.timeout(0)
            visit.open = False
            enc.end(env.now)

    def _immunize(self, enc: Encounter, t: float, age_days: float) -> None:
        months = age_days / 30.4375
        rec = self.person.record.immunizations
        for vac in facts.immunization_schedule():
            given = self.doses.get(vac.key, 0)
            due = _doses_due(vac, months)
            if due > given:
                self.doses[vac.key] = given + 1
                rec.append(Immunization("wellness", t, (Code("CVX", vac.cvx, vac.display),), enc))


def _doses_due(vac: Any, months: float) -> int:
    n = bisect.bisect_right(vac.ages_months, months + 1e-9)  # sorted by the schedule
    every = getattr(vac, "repeat_every_months", None)
    if every:
        start = getattr(vac, "repeat_from_months", 0.0) or 0.0
        until = getattr(vac, "repeat_until_months", None) or math.inf
        if months >= start:
            n += int((min(months, until) - start) // every) + 1
    return n


def _percentile(z: float) -> float:
    return 50.0 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _normal(u: Any) -> float:
    return math.sqrt(-2.0 * math.log(1.0 - u())) * math.cos(2.0 * math.pi * u())


# Social needs and other person facts that Synthea's Java code sets and its modules read.
# Shares of US households or people: food insecurity 12.8% (USDA ERS, Household Food
# Security in the United States in 2022); severe housing cost burden 15% (HUD CHAS
# 2016-2020); no vehicle 8.3% (ACS 2022 table B08201); unemployment 3.6% (BLS 2023 annual
# average); Rh-negative blood 15% (American Red Cross); bicuspid aortic valve 1.3%
# (Siu & Silversides, JACC 2010); foreign-born 13.9% (ACS 2022). A low socioeconomic
# category doubles the social-need shares and a high one halves them (our assumption).
_SOCIAL_SHARES = {
    "food_insecurity": 0.128,
    "severe_housing_cost_burden": 0.15,
    "no_vehicle_access": 0.083,
    "unemployed": 0.036,
}
_SES_FACTOR = {"Low": 2.0, "Middle": 1.0, "High": 0.5}
# HHS poverty guideline 2023 for a household of three, used for the income-to-poverty ratio.
_POVERTY_LINE = 24860.0


def social_attributes(person: Person, demo: Any) -> dict[str, Any]:
    """Attributes the modules read about a person's circumstances, drawn once at birth."""
    u = person.uniform
    factor = _SES_FACTOR.get(demo.socioeconomic_category, 1.0)
    out: dict[str, Any] = {k: u() < min(1.0, p * factor) for k, p in _SOCIAL_SHARES.items()}
    out["poverty_ratio"] = round(demo.income / _POVERTY_LINE, 2)
    out["RH_NEG"] = u() < 0.15
    out["bicuspid_aortic_valve"] = u() < 0.013
    out["birth_country"] = "United States" if u() >= 0.139 else "Other"
    out["address"] = demo.address
    return out
