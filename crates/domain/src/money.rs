//! Money as the services move it: a non-negative count of minor units (cents, pence) in
//! one ISO 4217 currency. Amounts in two currencies never add up, and an addition that
//! would overflow is an error rather than a wrapped or saturated total: an order priced
//! wrong is worse than an order refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// An ISO 4217 alphabetic code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// `raw` if it is a currency code.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(InvalidValue(format!(
                "currency must be a three-letter ISO 4217 code such as EUR, not {raw:?}"
            ))),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Three ASCII letters, checked by `parse`, are always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an amount could not be made or computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Amounts here are prices and totals: never below zero.
    #[error("an amount must not be negative")]
    Negative,
    /// The operands are in different currencies.
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    /// The result does not fit in 64 bits of minor units.
    #[error("the amount is too large")]
    Overflow,
}

/// An amount in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// `minor` units of `currency`.
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self { minor, currency })
    }

    /// Nothing, in `currency`: where a sum starts.
    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    /// The amount in minor units.
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// Its currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Whether there is anything to pay.
    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }

    /// `self + other`, in their common currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// `count` times this amount (a unit price times a quantity).
    pub fn checked_times(self, count: i64) -> Result<Money, MoneyError> {
        if count < 0 {
            return Err(MoneyError::Negative);
        }
        let minor = self.minor.checked_mul(count).ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(eur().as_str(), "EUR");
        for bad in ["eur", "EURO", "EU", "", "E1R", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_currencies_never_add_up() {
        let usd = Currency::parse("USD").unwrap();
        let sum = Money::zero(eur()).checked_add(Money::zero(usd));
        assert_eq!(sum, Err(MoneyError::CurrencyMismatch(eur(), usd)));
    }

    #[test]
    fn amounts_are_never_negative() {
        assert_eq!(Money::new(-1, eur()), Err(MoneyError::Negative));
        assert_eq!(
            Money::zero(eur()).checked_times(-1),
            Err(MoneyError::Negative)
        );
    }

    proptest! {
        #[test]
        fn addition_is_exact_or_refused(a in 0..=i64::MAX, b in 0..=i64::MAX) {
            let (x, y) = (Money::new(a, eur()).unwrap(), Money::new(b, eur()).unwrap());
            match a.checked_add(b) {
                Some(sum) => prop_assert_eq!(x.checked_add(y).map(|m| m.minor()), Ok(sum)),
                None => prop_assert_eq!(x.checked_add(y), Err(MoneyError::Overflow)),
            }
            prop_assert_eq!(x.checked_add(y), y.checked_add(x));
        }

        #[test]
        fn multiplication_is_exact_or_refused(a in 0..=i64::MAX, n in 0..=i64::MAX) {
            let x = Money::new(a, eur()).unwrap();
            match a.checked_mul(n) {
                Some(product) => prop_assert_eq!(x.checked_times(n).map(|m| m.minor()), Ok(product)),
                None => prop_assert_eq!(x.checked_times(n), Err(MoneyError::Overflow)),
            }
        }
    }
}
