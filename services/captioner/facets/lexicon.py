"""The facet lexicon: which caption words signal which facet, as data.

The default facet extractor (:mod:`services.captioner.facets`) reads Qwen3-Omni-Captioner's
English prose with these tables and nothing else: change what it finds here, not in code.

Taxonomy (the labels themselves are the contract, in :mod:`services.events.models`)
------------------------------------------------------------------------------------
Emotions, per speaker role, with an intensity in [0, 1]:

==============  ================================================================
anger           angry, furious, irate, hostile, shouting, yelling, a raised voice
frustration     frustrated, annoyed, irritated, impatient, exasperated, fed up
sadness         sad, tearful, sobbing, crying, sorrowful, disappointed, dejected
fear            afraid, scared, frightened, terrified, panicked, fearful
anxiety         anxious, nervous, worried, uneasy, tense, apprehensive
distress        distressed, upset, desperate, frantic, pleading, a trembling voice
confusion       confused, puzzled, perplexed, unsure
surprise        surprised, astonished, startled, shocked, in disbelief
joy             happy, cheerful, delighted, excited, pleased, relieved, grateful
calm            calm, composed, patiently, reassuring, polite, friendly, soothing
neutral         neutral, matter-of-fact, flat, monotone, unemotional
==============  ================================================================

Sound events (non-speech), with a confidence in [0, 1]: siren, alarm, glass_breaking,
gunshot, explosion, impact (bang, thud, crash), screaming, crying, laughter, dog_bark,
music, applause, crowd, phone_ringing, beep, door, footsteps, car_horn, traffic,
keyboard_typing, breathing, wind, rain, thunder, static (line noise, a poor connection).

Languages: ISO 639-1 codes (``yue`` for Cantonese) of the languages the caption says are
spoken; an accent ("a Spanish accent") is not a language.

How to read the tables
----------------------
Every key is a regular-expression fragment matched case-insensitively on whole words
(a space matches any run of whitespace). Where two entries overlap, the longest match wins,
so a longer "skip" entry (label ``None``) shields a shorter cue: "customer service call" is
not a customer, "calm down" is not calm, "false alarm" is not an alarm.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------------------------------------------------------
# Emotions: cue -> base intensity. Modifiers ("very", "slightly") and hedges adjust it.
# ------------------------------------------------------------------------------------------

EMOTION_CUES: Final[dict[str, dict[str, float]]] = {
    "anger": {
        r"angr(y|ier|ily)": 0.75,
        r"anger(ed)?": 0.75,
        r"furious(ly)?|fury": 0.9,
        r"enraged|rage|raging|livid|seething|outraged?": 0.9,
        r"irate(ly)?": 0.85,
        r"hostile|hostility": 0.75,
        r"aggressive(ly)?|aggression": 0.75,
        r"confrontational": 0.65,
        r"indignant(ly)?|indignation": 0.6,
        r"threaten(s|ing|ed)?": 0.8,
        r"heated": 0.65,
        r"argu(e|es|ing|ed)|argument(ative)?": 0.55,
        # Not "shouts in panic" (fear) or "shouts with joy".
        r"(shout|yell)(s|ing|ed)?(?! (in|with|for) (panic|fear|terror|alarm|pain|surprise|excitement|joy|delight|help))": 0.65,
        r"(rais(es|ing|ed)|raise) (his|her|their|the|a) voices?|raised voices?": 0.6,
        r"swear(s|ing)?|curs(es|ing)|profanit(y|ies)": 0.65,
        r"snap(s|ped|ping)": 0.55,
        r"bitter(ly|ness)?|harsh(ly)?": 0.5,
    },
    "frustration": {
        r"frustrat(ed|ion)": 0.65,
        r"exasperat(ed|ion)": 0.7,
        r"annoy(ed|ance)": 0.5,
        r"irritat(ed|ion)|irritabl[ey]": 0.55,
        r"impatien(t|tly|ce)": 0.55,
        r"fed up": 0.7,
        r"aggravated": 0.6,
        r"displeased|dissatisf(ied|action)|unhappy": 0.55,
        r"(losing|lost|lose|loses) (his|her|their) patience": 0.7,
        r"complain(s|ing|ed)?|grumbl(es|ing|ed)": 0.45,
        r"sarcastic(ally)?|sarcasm": 0.5,
        r"curt(ly)?|terse(ly)?|clipped|defensive(ly)?": 0.4,
        r"(heavy|exasperated|audible|frustrated) sighs?|sighs heavily": 0.5,
        r"sigh(s|ing|ed)?": 0.35,
    },
    "sadness": {
        r"sad(ly|ness)?": 0.65,
        r"sorrow(ful)?|grie(f|ving|ves)|mourn(s|ing|ful)": 0.75,
        r"tearful(ly)?|in tears": 0.75,
        r"sob(s|bing|bed)|weep(s|ing)|wept": 0.8,
        r"cr(y|ies|ying|ied)": 0.7,
        r"heartbroken|devastated": 0.85,
        r"dejected|downcast|despondent|gloomy|melanchol(y|ic)|somber(ly)?|sombre(ly)?": 0.6,
        r"disappoint(ed|ment)": 0.45,
        r"resigned|defeated": 0.4,
        r"subdued": 0.3,
    },
    "fear": {
        r"afraid|fearful(ly)?|fear": 0.7,
        r"scared|frightened": 0.7,
        r"terrified|terror|petrified|horrified": 0.9,
        r"panic(ked|ky|king)?": 0.85,
        r"dread": 0.7,
        r"alarmed": 0.6,
    },
    "anxiety": {
        r"anxious(ly)?|anxiety": 0.6,
        r"nervous(ly|ness)?": 0.55,
        r"worr(ied|y|ies|ying)": 0.55,
        r"uneas(y|e|ily)|apprehensi(ve|on)|jittery|on edge": 0.5,
        r"tense|tension": 0.5,
        r"stress(ed|ful)?": 0.55,
        r"hesitant(ly)?|hesitat(es|ing|ion)": 0.35,
        r"restless": 0.4,
    },
    "distress": {
        r"distress(ed|ing)?": 0.75,
        r"upset": 0.6,
        r"desperat(e|ely|ion)": 0.8,
        r"frantic(ally)?|hysteric(al|ally)?": 0.85,
        r"overwhelmed": 0.65,
        r"agitat(ed|ion)": 0.6,
        r"plead(s|ing|ed)?|begs?|begging|imploring": 0.7,
        r"(trembling|shaking|shaky|quivering|quavering|breaking|cracking|strained) voice": 0.7,
        r"voice( (is|sounds) \w+ and)? (trembles|trembling|shakes|shaking|quivers|quavers|breaks|cracks|cracking)": 0.7,
        r"voice (becomes|grows|turns|is|sounds|gets) (shaky|trembling|quivering|strained|tearful|choked)": 0.7,
        r"(cries|cry|crying|calls|calling|screams|screaming|shouts|shouting) (out )?for help": 0.9,
        r"cr(ies|y|ying|ied) out": 0.65,
        r"in (shock|pain|anguish|agony)|anguish(ed)?|traumati[sz]ed|shaken": 0.75,
        r"urgen(t|tly|cy)": 0.55,
    },
    "confusion": {
        r"confus(ed|ion)": 0.55,
        r"puzzl(ed|ement)|perplex(ed|ity)|bewilder(ed|ment)|baffled": 0.6,
        r"unsure|not sure|isn't sure|wasn't sure": 0.45,
        r"uncertain(ty)?": 0.45,
    },
    "surprise": {
        r"surpris(ed|e)": 0.6,
        r"astonish(ed|ment)|amazed|amazement|stunned": 0.7,
        r"startled": 0.6,
        r"shocked": 0.65,
        r"disbelief|incredulous(ly)?|taken aback": 0.6,
        r"gasps?|gasping": 0.45,
    },
    "joy": {
        r"happ(y|ily|iness)": 0.65,
        r"cheerful(ly)?|joyful(ly)?|joyous|jubilant": 0.7,
        r"delight(ed)?": 0.75,
        r"excit(ed|edly|ement)|enthusias(m|tic|tically)|elated|thrilled": 0.7,
        r"pleased|glad|satisfied": 0.5,
        r"grateful(ly)?|thankful|appreciative": 0.5,
        r"relie(f|ved)": 0.5,
        r"amused|playful(ly)?|jovial|upbeat|lighthearted|light-hearted": 0.55,
    },
    "calm": {
        r"calm(ly|ness)?": 0.6,
        r"composed|collected|unhurried|measured|even-tempered|level-headed": 0.5,
        r"relaxed": 0.55,
        r"patiently|with patience": 0.5,
        r"reassur(ing|ingly|es|ed|ance)": 0.55,
        r"sooth(ing|ingly|es)|gentl[ey]|soft-spoken|warm(ly)?": 0.5,
        r"polite(ly|ness)?|courteous(ly)?|friendly|cordial(ly)?|pleasant(ly)?": 0.45,
        r"professional(ly)?": 0.4,
        r"empathetic(ally)?|sympathetic(ally)?|understanding tone": 0.5,
    },
    "neutral": {
        r"neutral": 0.6,
        r"matter-of-fact(ly)?|businesslike|flat|monoton(e|ous)|even tone|level tone": 0.5,
        r"unemotional|emotionless|impassive|detached": 0.6,
    },
}

# Phrases that contain an emotion word but are not an emotion of a speaker.
EMOTION_SKIPS: Final[tuple[str, ...]] = (
    r"calm(s|ed|ing)? (\w+ )?down",  # "asks the caller to calm down": the caller is not calm
    r"(to|tries to|trying to|attempts to|helps|help) calm|calm(s|ed|ing)? (him|her|them|the \w+)",  # the verb
    r"(stay|remain|keep|be) calm,? (please|sir|madam|ma'am)",
    r"(neutral|flat) (accent|background|frequency|response|line)",
    r"content (of|is|was|includes?)",  # the noun "content"
    r"fear of missing",
    r"happy hour|happy birthday",
    r"(argument|arguments) (for|that)",
    r"measured (in|at|by)",
    r"sad to say",
    r"warm (water|weather|room|lighting|tone of the music)",
    r"steady (beat|rhythm|hum|stream|tone|rain|drone|pace)",
    r"(tense|tension) (in the music|of the music|music)",
    r"cr(y|ies|ying) of (a|the) (bird|seagull|gull|animal|baby|child)",
)
# A sigh of relief is relief.
EMOTION_CUES["joy"][r"sighs? of relief"] = 0.5

# An emotion word followed by one of these describes the sound, not a speaker ("calm music").
NON_SPEAKER_HEADS: Final[frozenset[str]] = frozenset(
    {
        "music", "melody", "melodies", "tune", "tunes", "song", "songs", "soundtrack", "score", "piano",
        "guitar", "strings", "instrumental", "chords", "notes", "jingle", "beat", "rhythm", "ambience",
        "ambient", "atmosphere", "environment", "room", "setting", "weather", "water", "waves", "breeze",
        "background", "soundscape", "synth", "synthesizer", "pad", "drone", "hum", "noise", "sound", "sounds",
        "harmony", "harmonies", "orchestra", "violin", "cello", "track", "mix", "recording", "studio",
        "quality", "microphone", "audio", "acoustics", "production", "clip",
    }
)  # fmt: skip

# ------------------------------------------------------------------------------------------
# Intensity modifiers: within three words before a cue, in the same clause.
# ------------------------------------------------------------------------------------------

AMPLIFIERS: Final[dict[str, float]] = {
    r"very|really|so|truly": 0.15,
    r"extremely|incredibly|intensely|utterly|absolutely|deeply|highly|terribly|profoundly|visibly|audibly": 0.2,
    r"clearly|openly|obviously|noticeably|evidently|distinctly|palpably": 0.1,
    r"increasingly|growing|increasing|escalating|mounting|more and more|becom(es|ing) more": 0.15,
    r"quite|rather|particularly|especially": 0.05,
    r"intense|strong|extreme|overt|palpable|deep|great|considerable": 0.15,
}
DOWNTONERS: Final[dict[str, float]] = {
    r"slight(ly)?|mild(ly)?|somewhat|a bit|a little|a little bit|faint(ly)?|subtle|subtly|vaguely": -0.25,
    r"(a|some) (hint|touch|trace|note|tinge|sense|degree) of|hints? of|traces? of|tinges? of|notes? of": -0.25,
    r"barely|hardly|scarcely": -0.35,
    r"restrained|controlled|suppressed|muted|underlying": -0.15,
}

# ------------------------------------------------------------------------------------------
# Non-speech sound events: cue -> base confidence. Hedges lower it.
# ------------------------------------------------------------------------------------------

SOUND_CUES: Final[dict[str, dict[str, float]]] = {
    "siren": {r"sirens?": 0.9, r"(police|ambulance|fire) (car|truck|engine)s? (siren|wail)": 0.9},
    "alarm": {
        r"alarms?": 0.85,
        r"(smoke|fire|carbon monoxide) detectors?": 0.8,
        r"alarm (clock|bell)s?": 0.85,
    },
    "glass_breaking": {
        r"(breaking|shattering|smashing|broken|shattered|smashed|crashing) (of )?(glass|window|windows|bottle|bottles|plates?|dishes)": 0.9,
        r"(glass|window|windows|bottle|bottles|plates?|dishes) (break(s|ing)?|shatter(s|ing)?|smash(es|ing)?|crash(es|ing)?)": 0.9,
        r"shatter(s|ed|ing)?": 0.75,
        r"(sound|clink|tinkle) of glass": 0.6,
    },
    "gunshot": {
        r"gun ?shots?|gunfire|gun ?fire|gun blasts?": 0.9,
        r"shots? (fired|ring out|rang out|being fired|are fired|were fired)": 0.9,
        r"(pistol|rifle|handgun|firearm|weapon) (shots?|fire|being fired|discharg\w*)": 0.9,
        r"(a|one|two|three|several|multiple|rapid|successive) (loud )?shots": 0.8,
        r"shooting": 0.6,
    },
    "explosion": {
        r"explosions?|explod(es|ing|ed)|detonat(es|ing|ed|ion)": 0.9,
        r"blasts?|bombs?": 0.7,
        r"booms?|booming": 0.6,
    },
    "impact": {
        r"bangs?|banging": 0.7,
        r"thud(s|ding)?|thump(s|ing)?|crash(es|ing)?|clatter(s|ing)?|slam(s|med|ming)?": 0.7,
    },
    "screaming": {r"scream(s|ing|ed)?|shriek(s|ing|ed)?|screech(es|ing)? of (a|the) (woman|man|child|person)": 0.85},
    "crying": {
        r"cr(y|ies|ying|ied)|sob(s|bing|bed)?|weep(s|ing)?|whimper(s|ing)?": 0.85,
        r"wail(s|ing)? of (a|an|the) (baby|child|infant|toddler)|(baby|infant|child|toddler)('s)? wail(s|ing)?": 0.85,
        r"(baby|infant|child|toddler) (is )?(crying|wailing|fussing)": 0.9,
    },
    "laughter": {r"laugh(s|ing|ed|ter)?|giggl(e|es|ing)|chuckl(e|es|ing|ed)": 0.85},
    "dog_bark": {r"bark(s|ing|ed)?|dogs? (yelp|howl|growl)(s|ing)?|yelp(s|ing)?": 0.85},
    "music": {
        r"music(al)?|melod(y|ies|ic)|songs?|singing|sings?|singer|vocals?|instrumental|soundtrack|jingle": 0.85,
        r"pianos?|guitars?|drums?|violins?|cellos?|orchestra(l)?|synth(esizer)?s?|saxophone|trumpet|chords?": 0.8,
        r"hold music|on-hold music|music on hold": 0.95,
        r"tunes?|beats": 0.6,
    },
    "applause": {r"applau(se|d|ds|ding)|clapping|claps|hand ?claps?|ovation": 0.85},
    "crowd": {
        r"crowd(s|ed)?|chatter(ing)?|murmur(s|ing)?|babble|cheer(s|ing)": 0.75,
        r"(many|several|multiple|other|background) (people|voices|conversations)|hubbub|commotion": 0.65,
        r"busy (office|call cent(er|re)|restaurant|room|cafe|café|bar|station)": 0.55,
    },
    "phone_ringing": {
        r"(phone|telephone|cellphone|mobile)s? (is |are )?(ring(s|ing)?|buzz(es|ing)?)": 0.9,
        r"ring(ing)? (of )?(a|the) (phone|telephone)|ringtones?|(phone|telephone) rings?": 0.9,
    },
    "beep": {r"beep(s|ing|ed)?|chimes?|chiming|dings?|dial tone|busy signal|tones? (sounds?|plays?)": 0.75},
    "door": {r"doors?|knock(s|ing|ed)?|doorbell": 0.75},
    "footsteps": {r"foot ?steps?|footfalls?|(walking|running) (sounds?|steps)": 0.85},
    "car_horn": {r"(car|vehicle|truck) horns?|horns? (honk|blar|beep)\w*|honk(s|ing|ed)?": 0.85},
    "traffic": {
        r"traffic|road noise|street noise|passing (cars?|vehicles?|trucks?)|(cars?|vehicles?) pass(ing|es)?": 0.8,
        r"(car|vehicle|truck|bus|motorcycle|engine)s? (engine )?(noise|rumble|rumbling|idl\w+|rev\w*|driv\w+)": 0.7,
        r"((car|vehicle|engine|exhaust)s? )?backfir(e|es|ing|ed)": 0.7,
    },
    "keyboard_typing": {
        r"typing|keyboards?|keystrokes?|key clicks?|(mouse|computer) click(s|ing)?": 0.8,
        r"keyboards? (clatter|clack|click)(s|ing)?|(clatter|clacking|clicking) of (the |a )?keyboards?": 0.85,
    },
    "breathing": {
        r"(heavy|laboured|labored|rapid|ragged|shallow|panicked|hard) breath(ing|s)?|panting|pants|hyperventilat\w+": 0.8,
        r"breathing heavily|breathes heavily|out of breath|breathless(ly)?": 0.8,
        r"breath(ing)? (is|sounds|becomes|grows) (heavy|laboured|labored|rapid|ragged|shallow|fast)": 0.8,
    },
    "wind": {r"wind|windy|gusts?|gusting": 0.7},
    "rain": {r"rain(fall|ing|drops)?|downpour|drizzl(e|ing)": 0.8},
    "thunder": {r"thunder(storm|clap|claps|ing)?|rumble of thunder": 0.85},
    "static": {
        r"static|crackl(e|es|ing)|hiss(ing|es)?|line noise|interference|distort(ed|ion)|garbled|choppy": 0.7,
        r"(poor|bad|weak|unstable|patchy) (connection|line|reception|signal)|(line|call|audio) (cuts|cutting|drops|dropping) out": 0.75,
    },
}

SOUND_SKIPS: Final[tuple[str, ...]] = (
    r"false alarm",
    r"alarm(ing|ingly)",
    r"(cr(y|ies|ying|ied)|call(s|ing)?) (out )?for help",  # distress, a request: not crying
    r"cr(y|ies|ying|ied) out",
    r"(a|the|no) far cry",
    r"music to (my|his|her|their) ears",
    r"face the music",
    r"(sounds?|sounding) (like )?(a )?broken record",
    r"door-to-door|next door|doorstep|(open|close|shut) the door on",
    r"static (ip|address|value|electricity)",
    r"shooting (for|at a goal|star)",
    r"(the )?crowd of (callers|customers)",
    r"speak(s|ing)? in a sing-song",  # intonation, not singing
    r"thunderous applause",  # counted once, as applause (see APPLAUSE cue via 'applause')
    r"wind(s|ing)? (down|up)",
    r"rain check",
    r"key clicks? of (his|her|their) tongue",
    r"(in|with) (a|an) (\w+ )?tone (of|that)",  # "a tone of", intonation
)

# ------------------------------------------------------------------------------------------
# Speakers and roles
# ------------------------------------------------------------------------------------------

# Words that name a role in a contact-centre call, mapped to the role.
ROLE_CUES: Final[dict[str, str]] = {
    r"customers?|callers?|clients?|consumers?|subscribers?|policyholders?|account holders?|complainants?": "customer",
    r"customer (service|support|care) (agents?|representatives?|reps?|workers?|specialists?|advisors?|advisers?|staff|employees?|operators?|associates?)": "agent",
    r"(call|contact)[ -]?(center|centre) (agents?|workers?|employees?|operators?|staff)": "agent",
    r"agents?|representatives?|reps?|operators?|advisors?|advisers?|dispatchers?|receptionists?|call-takers?|call takers?": "agent",
    r"(support|service|sales|helpdesk|help desk) (staff|person|worker|specialist|representative|agent|associate|engineer)s?": "agent",
    r"technicians?|clerks?|salespersons?|employees?|staff members?": "agent",
    r"(the )?(person|one|voice) (answering|taking) the call": "agent",
}
# Role-looking phrases that name no person ("a customer service call").
ROLE_SKIPS: Final[tuple[str, ...]] = (
    r"customer (service|support|care|experience|account|number|id|details|record)s?( (calls?|lines?|cent(er|re)s?|settings?|contexts?|interactions?|conversations?|departments?|teams?|environments?|scenarios?))?",
    r"(call|contact)[ -]?(center|centre)s?( (calls?|settings?|environments?|contexts?|interactions?))?",
    r"(travel|insurance|estate|secret|free) agents?",
)

# People the caption names without a role: in a split channel they are that channel's
# speaker; in a mixed window their role is unknown. Gender lets a later "she" find them.
GENERIC_SPEAKERS: Final[dict[str, str | None]] = {
    r"(man|men|gentlem[ae]n|guys?|boys?|male( (speaker|voice|adult)s?)?)": "m",
    r"(woman|women|lady|ladies|girls?|female( (speaker|voice|adult)s?)?)": "f",
    r"(speakers?|persons?|individuals?|someone|somebody|adults?)( (one|two|three|1|2|3|a|b))?": None,
    r"(first|second|third|other|main|primary|lead) (speaker|voice|person)": None,
}
# Not a party to the call: emotions they show get no role, whatever the channel.
NON_PARTIES: Final[dict[str, str]] = {
    r"bab(y|ies)|infants?|toddlers?|child|children|kids?": "human",
    r"crowds?|audiences?|people in the background|background (voices?|speakers?|conversations?)|passers-by|bystanders?": "human",
    r"(another|a third|a different|an unseen|a distant|a background) (person|voice|speaker|man|woman)": "human",
    r"dogs?|puppy|puppies|cats?|birds?|animals?|parrot|horse": "animal",
}
# A sentence about the conversation as a whole ("The conversation between the caller and the
# agent is cordial", "The overall mood is tense"): its predicate is nobody's in particular.
SCENE_SUBJECTS: Final[tuple[str, ...]] = (
    r"(the |this |that )?(overall )?(conversation|call|exchange|interaction|dialogue|discussion|mood|atmosphere|ambiance|ambience|vibe)",
)
# What may stand between a scene subject and its verb: a prepositional phrase naming people.
SCENE_PHRASE: Final[frozenset[str]] = frozenset(
    {"between", "of", "with", "among", "from", "on", "the", "a", "an", "and", "two", "both", "overall", "entire", "whole"}
)
COPULAS: Final[frozenset[str]] = frozenset(
    {"is", "are", "was", "were", "remains", "remained", "feels", "felt", "seems", "seemed", "sounds", "stays", "becomes", "turns", "grows"}
)

PRONOUNS: Final[dict[str, str | None]] = {
    r"he|him|his|himself": "m",
    r"she|her|hers|herself": "f",
    r"they|them|their|theirs|themselves": None,
}
# Between a role and a gender word these keep them the same person
# ("the customer, a middle-aged woman"; "a female agent"; "the caller is a man").
APPOSITION_FILLERS: Final[frozenset[str]] = frozenset(
    {
        ",", "(", ")", "-", "—", "–", "a", "an", "the", "is", "was", "who", "appears", "seems", "to", "be",
        "likely", "probably", "presumably", "apparently", "possibly", "perhaps", "young", "younger", "old",
        "older", "elderly", "middle-aged", "adult", "mature", "male", "female", "in", "his", "her", "their",
        "twenties", "thirties", "forties", "fifties", "sixties", "seventies", "20s", "30s", "40s", "50s",
        "60s", "70s", "early", "mid", "late", "also", "identified", "as",
    }
)  # fmt: skip
# Between an emotion word and the person it describes ("an angry, elderly caller",
# "In a frustrated tone, the customer..."). "," and "and" count only where the sentence names
# no one before the emotion word, or where an adjective follows them ("angry and upset caller").
PREMODIFIER_FILLERS: Final[frozenset[str]] = frozenset(
    {
        ",", "and", "a", "an", "the", "tone", "voice", "manner", "way", "sounding", "very", "increasingly",
        "clearly", "visibly", "young", "younger", "older", "elderly", "middle-aged", "adult", "male", "female",
    }
)  # fmt: skip
# "in a friendly voice", "with an angry tone": a manner phrase describes the clause's subject.
MANNER_NOUNS: Final[frozenset[str]] = frozenset(
    {"voice", "tone", "manner", "way", "fashion", "cadence", "delivery", "register", "timbre", "intonation"}
)
# ", sounding satisfied": a participle after a comma describes the sentence's subject.
SUBJECT_PARTICIPLES: Final[frozenset[str]] = frozenset({"sounding", "seeming", "appearing", "looking", "growing"})
AGE_WORDS: Final[frozenset[str]] = frozenset({"young", "younger", "older", "elderly", "middle-aged", "adult", "male", "female"})

# ------------------------------------------------------------------------------------------
# Negation, hedges, clause structure
# ------------------------------------------------------------------------------------------

# A negation cue negates the cues after it, to the end of its clause.
NEGATIONS: Final[tuple[str, ...]] = (
    r"no|not|never|none|nothing|nobody|no one|neither|nor|without|cannot|\w+n't",
    r"(lack|lacks|lacking|absence|devoid|free|void) (of|from)|lacks|lacking",
    r"no (sign|signs|hint|hints|trace|traces|indication|indications|evidence|suggestion) of",
    r"rather than|instead of|as opposed to|no longer|not any|absent",
)
# A negation cue after its target: "anger is absent", "music is not present".
POST_NEGATIONS: Final[tuple[str, ...]] = (
    r"(is|are|was|were) (absent|missing|not (present|audible|heard|detected|evident|apparent|noticeable|discernible))",
    r"(absent|missing)",
)
# Negation look-alikes that negate nothing.
NEGATION_SKIPS: Final[tuple[str, ...]] = (
    r"nothing but|not only|not just|no doubt|without (a )?doubt|no less|not least",
    r"(can't|cannot|couldn't|could not) (stop|help|hide|contain|conceal|believe)|no matter",
    r"no other (speakers?|voices?|people|persons?|sounds? (are|is) (audible|present))",
    r"never (once )?(stops?|stopping|ceases?)",
    r"not (until|far)",
)
# Hedges: cue -> strength ("mild" keeps most of the claim, "strong" halves it).
HEDGES: Final[dict[str, str]] = {
    r"seem(s|ed|ingly)?|appear(s|ed|ing)?( to( be)?)?|apparently|likely|probably|presumably|suggest(s|ing|ive of)|indicat(es|ing|ive of)": "mild",
    r"possibl[ey]|perhaps|maybe|might|may|could( be)?|potentially|conceivably": "strong",
    r"(what|something that|that) (sounds|seems|appears|could be|might be|may be)( like| to be)?": "strong",
    r"sounds? like|something like|resembl(es|ing)|reminiscent of|akin to|similar to": "strong",
    r"(it is|it's|it remains) (unclear|uncertain|hard to tell|difficult to tell|not clear)( (whether|if))?": "strong",
    r"unclear (whether|if)|ambiguous": "strong",
}
# Look-alikes that hedge nothing: "a siren can be heard" is a plain statement.
HEDGE_SKIPS: Final[tuple[str, ...]] = (
    r"(can|could|may) (clearly |also |still |faintly |distinctly )?(be )?(clearly |also |still |faintly |distinctly )?(heard|hear|detected|detect|noticed|discerned|made out|perceived|identified)",
    r"sounds like (a|an) (typical|standard|normal|ordinary|real|genuine) (customer service|support|phone|call)",
)
HEDGE_FACTORS: Final[dict[str, dict[str, float]]] = {
    # intensity multiplier and confidence per hedge strength
    "none": {"intensity": 1.0, "confidence": 0.9},
    "mild": {"intensity": 0.85, "confidence": 0.7},
    "strong": {"intensity": 0.7, "confidence": 0.45},
}

# Tokens that always end a negation or hedge scope.
CLAUSE_BREAKS: Final[frozenset[str]] = frozenset({".", ";", ":", "!", "?", "(", ")", "—", "–", '"'})
CONTRASTS: Final[frozenset[str]] = frozenset(
    {"but", "however", "although", "though", "while", "whilst", "whereas", "yet", "except", "until", "which", "when", "unlike"}
)
# After "and", one of these starts a new clause ("no music and a dog barks").
CLAUSE_STARTERS: Final[frozenset[str]] = frozenset(
    {
        "a", "an", "the", "she", "he", "they", "it", "there", "someone", "his", "her", "their", "this", "that",
        "then", "later", "now", "occasionally", "meanwhile", "in", "at", "after", "before",
    }
)  # fmt: skip
# Where a clause "happens in the background", its people are not parties to the call.
BACKGROUND_MARKERS: Final[tuple[str, ...]] = (r"in the background|background|in the distance|distant|off-mic|off mic",)

# ------------------------------------------------------------------------------------------
# Speech and languages
# ------------------------------------------------------------------------------------------

SPEECH_CUES: Final[tuple[str, ...]] = (
    r"speak(s|ing|er|ers)?|spoke(n)?|speech|talk(s|ing|ed)?|conversation(al)?|dialogue|dialog",
    r"says?|said|asks?|asked|asking|repl(y|ies|ied)|respond(s|ed|ing)?|explain(s|ed|ing)?|greet(s|ed|ing)?",
    r"voices?|utter(s|ed|ance|ances)|words|phrases?|sentences?|monologue|narrat(es|ed|ing|ion|or)|convers(e|es|ed|ing)",
    r"call(s|ing|ed)? out|announc(es|ed|ing|ement)|read(s|ing)? (out|aloud)|greeting|instructions",
    r"whisper(s|ed|ing)?|mutter(s|ed|ing)?|mumbl(es|ed|ing)|shout(s|ed|ing)?|yell(s|ed|ing)?|exclaim(s|ed)?",
    r"caller|agent|customer|representative|operator|interview(er|ee)?|announcer|presenter|host",
)
SPEECH_SKIPS: Final[tuple[str, ...]] = (
    r"singing voices?|vocals?|vocalist|vocali[sz]ations? of (a|the) (dog|bird|animal)",
    r"no other (speakers?|voices?|speech)",
)
LANGUAGES: Final[dict[str, str]] = {
    r"english": "en",
    r"spanish|castilian": "es",
    r"french": "fr",
    r"german": "de",
    r"italian": "it",
    r"portuguese|brazilian portuguese": "pt",
    r"mandarin( chinese)?|chinese|putonghua": "zh",
    r"cantonese": "yue",
    r"japanese": "ja",
    r"korean": "ko",
    r"russian": "ru",
    r"arabic": "ar",
    r"hindi": "hi",
    r"urdu": "ur",
    r"bengali|bangla": "bn",
    r"dutch|flemish": "nl",
    r"polish": "pl",
    r"turkish": "tr",
    r"vietnamese": "vi",
    r"thai": "th",
    r"indonesian|bahasa indonesia": "id",
    r"malay|bahasa melayu": "ms",
    r"tagalog|filipino": "tl",
    r"swedish": "sv",
    r"norwegian": "no",
    r"danish": "da",
    r"finnish": "fi",
    r"greek": "el",
    r"hebrew": "he",
    r"ukrainian": "uk",
    r"czech": "cs",
    r"romanian": "ro",
    r"hungarian": "hu",
    r"persian|farsi": "fa",
    r"swahili": "sw",
}
# A language name counts only next to speech: "speaks Spanish", "in Spanish", "Spanish speech".
LANGUAGE_BEFORE: Final[frozenset[str]] = frozenset(
    {
        "in", "speak", "speaks", "speaking", "spoken", "spoke", "language", "languages", "to", "and", "or",
        "switches", "switch", "switching", "native", "fluent", "fluently", "says", "said", "talks", "talking",
        "conversation", "dialogue", "between", "from", "standard", "american", "british", "australian",
        "canadian", "mexican", "european", "latin", "simplified", "traditional", "colloquial", "formal",
        "accented", "non-native", "both", "mixing", "mixes", "mixed", "bilingual",
    }
)  # fmt: skip
LANGUAGE_AFTER: Final[frozenset[str]] = frozenset(
    {
        "speech", "speaker", "speakers", "speaking", "language", "conversation", "dialogue", "words", "phrases",
        "greeting", "and", "or", "with", "is", "was", "throughout", "only", "mixed", "phrase", "sentence",
        "sentences", "interjections", "utterances", "voice", "voices", "call", "exchange",
    }
)  # fmt: skip
# A language name followed by these is an accent or a style, not a spoken language.
LANGUAGE_NOT: Final[str] = r"accent(s|ed)?|music|songs?|guitars?|pop|folk|rap|opera|style|food|cuisine|restaurant"
