//! The travel agent: flights and hotels searched, compared against policy, booked, then changed.

use serde_json::json;

use super::script::{Script, call};

pub(super) struct Trip {
    traveler: &'static str,
    origin: &'static str,
    origin_code: &'static str,
    city: &'static str,
    city_code: &'static str,
    event: &'static str,
    venue: &'static str,
    out_date: &'static str,
    back_date: &'static str,
    later_date: &'static str,
    airline: &'static str,
    hotels: [&'static str; 3],
    home: &'static str,
    local: &'static str,
    /// Local currency units per home currency unit, times 100.
    rate_x100: u64,
}

pub(super) const TRIPS: [Trip; 3] = [
    Trip {
        traveler: "Maya",
        origin: "London",
        origin_code: "LHR",
        city: "Oslo",
        city_code: "OSL",
        event: "NDC Oslo",
        venue: "Oslo Spektrum",
        out_date: "2026-06-08",
        back_date: "2026-06-12",
        later_date: "2026-06-13",
        airline: "SK",
        hotels: ["Thon Hotel Opera", "Clarion Hotel The Hub", "Hotel Christiania Teater"],
        home: "GBP",
        local: "NOK",
        rate_x100: 1350,
    },
    Trip {
        traveler: "Jonas",
        origin: "New York",
        origin_code: "JFK",
        city: "Lisbon",
        city_code: "LIS",
        event: "Web Summit",
        venue: "MEO Arena",
        out_date: "2026-11-08",
        back_date: "2026-11-13",
        later_date: "2026-11-14",
        airline: "TP",
        hotels: ["Hotel Oriente", "Tivoli Oriente", "Myriad by SANA"],
        home: "USD",
        local: "EUR",
        rate_x100: 92,
    },
    Trip {
        traveler: "Aiko",
        origin: "Paris",
        origin_code: "CDG",
        city: "Kyoto",
        city_code: "KIX",
        event: "the ICML workshops",
        venue: "Kyoto International Conference Center",
        out_date: "2026-07-19",
        back_date: "2026-07-25",
        later_date: "2026-07-26",
        airline: "AF",
        hotels: ["Hotel Grand Bach Kyoto", "Kyoto Takaragaike Prince", "The Hotel Seiryu"],
        home: "EUR",
        local: "JPY",
        rate_x100: 16_200,
    },
];

pub(super) fn play(s: &mut Script, t: &Trip) {
    let (city, venue, out, back, later, air, home, local) =
        (t.city, t.venue, t.out_date, t.back_date, t.later_date, t.airline, t.home, t.local);
    let [hotel_a, hotel_b, hotel_c] = t.hotels;
    let budget = 180;
    // Nightly rates in the home currency, and what the hotels quote locally.
    let home_rates = [165u64, 142, 210];
    let local_rates = home_rates.map(|r| r * t.rate_x100 / 100);
    let pnr = format!("K7Q{}X", t.traveler.len() * 7);
    s.system(format!(
        "You are a travel assistant booking business trips for {}. Tools: search_flights, search_hotels, \
         get_weather, convert_currency, book, add_calendar_event, search_transit, change_booking, set_reminder. \
         Company policy: economy class, hotels under {budget} {home} per night, prefer refundable fares. Always \
         confirm before booking.",
        t.traveler
    ));

    s.user(format!(
        "I need to be in {city} for {} at {venue}, {out} to {back}. I'm flying from {}. What are my options?",
        t.event, t.origin
    ));
    s.tools(
        "I'll search both directions at once.",
        vec![
            call(
                "search_flights",
                json!({"from": t.origin_code, "to": t.city_code, "date": out, "cabin": "economy"}),
                format!(
                    "1. {air}1422 dep 07:10 arr 10:05, economy flex (refundable), 214 {home}\n2. {air}1430 dep 12:40 \
                     arr 15:35, economy flex (refundable), 189 {home}\n3. {air}1446 dep 18:55 arr 21:50, economy \
                     light (non-refundable), 131 {home}"
                ),
            ),
            call(
                "search_flights",
                json!({"from": t.city_code, "to": t.origin_code, "date": back, "cabin": "economy"}),
                format!(
                    "1. {air}1437 dep 17:20 arr 18:15, economy flex (refundable), 198 {home}\n2. {air}1451 dep 20:35 \
                     arr 21:30, economy light (non-refundable), 119 {home}"
                ),
            ),
        ],
    );
    s.tools(
        "",
        vec![call(
            "get_weather",
            json!({"city": city, "from": out, "to": back}),
            format!("{city}, {out} to {back}: highs 19-23 C, lows 11-14 C, rain likely on 2 of the days"),
        )],
    );
    s.answer(format!(
        "Outbound, {air}1422 at 07:10 arrives 10:05, in time for the afternoon sessions (214 {home}, refundable). \
         Back, {air}1437 at 17:20 (198 {home}, refundable) leaves time for the last day. The cheaper evening fares \
         are non-refundable, which policy discourages. Expect mild weather with some rain."
    ));

    s.user(format!("Take the early flight out and the 17:20 back. Hotels near {venue} within policy?"));
    s.tools(
        "",
        vec![call(
            "search_hotels",
            json!({"near": venue, "check_in": out, "check_out": back, "max_results": 3}),
            format!(
                "1. {hotel_a}, 0.4 km, {} {local}/night, free cancellation\n2. {hotel_b}, 0.9 km, {} {local}/night, \
                 free cancellation\n3. {hotel_c}, 0.2 km, {} {local}/night, non-refundable",
                local_rates[0], local_rates[1], local_rates[2]
            ),
        )],
    );
    s.tools(
        &format!("Policy is in {home}, so converting the nightly rates."),
        vec![call(
            "convert_currency",
            json!({"amounts": local_rates, "from": local, "to": home}),
            format!(
                "{} {local} = {} {home}; {} {local} = {} {home}; {} {local} = {} {home}",
                local_rates[0], home_rates[0], local_rates[1], home_rates[1], local_rates[2], home_rates[2]
            ),
        )],
    );
    s.answer(format!(
        "Two fit the policy: {hotel_a} ({} {home} a night, 5 minutes' walk) and {hotel_b} ({} {home}, 12 minutes). \
         {hotel_c} is the closest but {} {home} and non-refundable, so it is out of policy.",
        home_rates[0], home_rates[1], home_rates[2]
    ));

    s.user(format!("Book both flights and {hotel_b}."));
    s.tools(
        "Booking the flights and the hotel in parallel.",
        vec![
            call(
                "book",
                json!({"type": "flight", "legs": [format!("{air}1422 {out}"), format!("{air}1437 {back}")], "fare": "economy flex"}),
                format!("confirmed: PNR {pnr}, {air}1422 {out} + {air}1437 {back}, refundable, total 412 {home}"),
            ),
            call(
                "book",
                json!({"type": "hotel", "name": hotel_b, "check_in": out, "check_out": back}),
                format!("confirmed: {hotel_b}, {out} to {back}, confirmation HB-20931, free cancellation until 18:00 the day before"),
            ),
        ],
    );
    s.tools(
        "",
        vec![call(
            "add_calendar_event",
            json!({"events": ["outbound flight", "hotel stay", "return flight"], "pnr": pnr}),
            "created 3 events: outbound flight, hotel stay, return flight",
        )],
    );
    s.answer(format!(
        "Booked: flights under PNR {pnr} (412 {home}, refundable) and {hotel_b} under HB-20931 (free cancellation). \
         All three are in your calendar."
    ));

    s.user("How do I get from the airport to the hotel?".to_string());
    s.tools(
        "",
        vec![call(
            "search_transit",
            json!({"from": format!("{} airport", t.city_code), "to": hotel_b, "arrive_by": format!("{out}T11:30")}),
            "airport train to the centre, 20-40 min, every 10 min, then 8 min walk; taxi 35-45 min",
        )],
    );
    s.answer(format!(
        "Take the airport train to the centre (every 10 minutes) and walk 8 minutes to {hotel_b}; you will be there \
         well before noon. A taxi takes 35 to 45 minutes and costs several times more."
    ));

    s.user("The closing dinner moved to the last evening. Can you push the return flight one day later?".to_string());
    s.tools(
        "",
        vec![call(
            "search_flights",
            json!({"from": t.city_code, "to": t.origin_code, "date": later, "cabin": "economy"}),
            format!("1. {air}1437 dep 17:20 arr 18:15, economy flex (refundable), 221 {home}"),
        )],
    );
    s.tools(
        "The same 17:20 flight runs the next day; changing the return leg.",
        vec![call(
            "change_booking",
            json!({"pnr": pnr, "leg": 2, "flight": format!("{air}1437"), "date": later}),
            format!("changed: leg 2 now {air}1437 {later}; fare difference 23 {home}, no change fee (flex fare)"),
        )],
    );
    s.tools(
        "The hotel needs one more night as well.",
        vec![call(
            "change_booking",
            json!({"confirmation": "HB-20931", "check_out": later}),
            format!("changed: {hotel_b}, check-out {later}, one extra night at {} {home}", home_rates[1]),
        )],
    );
    s.answer(format!(
        "Done: you now fly back on {later} at 17:20 (23 {home} fare difference, no fee), and the hotel is extended \
         by one night ({} {home}). The calendar is updated.",
        home_rates[1]
    ));

    s.user("What should I pack?".to_string());
    s.tools(
        "",
        vec![call(
            "get_weather",
            json!({"city": city, "from": out, "to": later, "detail": "daily"}),
            "daily: mostly cloudy, highs 19-23 C, showers likely on days 2 and 4, wind light",
        )],
    );
    s.answer(
        "For mild, sometimes wet weather:\n- a light rain jacket and a compact umbrella\n- layers: a sweater for the \
         evenings and air-conditioned halls\n- comfortable shoes for walking to the venue\n- smart-casual outfit for \
         the closing dinner\n- adapter and power bank for long conference days"
            .to_string(),
    );

    s.user("Give me a summary I can forward to my manager for approval.".to_string());
    s.answer(format!(
        "Trip: {} to {city} for {}, {out} to {later}.\nFlights: {air}1422 out, {air}1437 back, economy flex, 435 {home} \
         in total (PNR {pnr}).\nHotel: {hotel_b}, {} nights at {} {home}, free cancellation (HB-20931).\nAll within \
         policy; everything is refundable.",
        t.traveler,
        t.event,
        nights(out, later),
        home_rates[1]
    ));

    s.user("Thanks! Remind me the evening before to check in online.".to_string());
    s.tools(
        "",
        vec![call(
            "set_reminder",
            json!({"at": format!("the evening before {out}, 19:00"), "text": format!("Check in online for {air}1422 (PNR {pnr})")}),
            "reminder set",
        )],
    );
    s.answer("Done: a reminder at 19:00 the evening before you fly, with your booking reference.".to_string());
}

/// Nights between two `YYYY-MM-DD` dates of the same month (the demo's trips never span two).
fn nights(from: &str, to: &str) -> u32 {
    let day = |d: &str| d.get(8..10).and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
    day(to).saturating_sub(day(from))
}

/// What the traveler and agent say after the trip is booked: the demo appends it while the
/// session is being compacted.
pub(super) fn follow_up(s: &mut Script, t: &Trip) {
    let (city, venue, back) = (t.city, t.venue, t.back_date);
    s.user(format!("One more thing: put the closing dinner in my calendar, {back} at 19:30, near {venue}."));
    s.tools(
        "",
        vec![call(
            "add_calendar_event",
            json!({
                "title": format!("{} closing dinner", t.event),
                "start": format!("{back}T19:30"),
                "location": venue,
            }),
            "event created",
        )],
    );
    s.answer(format!("Added: the {} closing dinner on {back} at 19:30, near {venue}.", t.event));
    s.user("Perfect, that's everything.".to_string());
    s.answer(format!("Have a good trip to {city}, {}!", t.traveler));
}
